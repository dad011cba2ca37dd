"""Sacred ingredients: one per concern (data, model, optimizer, seeding), each a config scope
plus captured factories, and the config rule language they share (ingredients.schema).

The package only re-exports; importing it first imports Sacred without pandas (see
ingredients.sacred_import), so every ingredient module that imports Sacred next finds it loaded.
"""

from ingredients.sacred_import import import_sacred_without_pandas

import_sacred_without_pandas()

from ingredients.schema import (  # noqa: E402
    BOOLEAN,
    INSPECTION_COMMANDS,
    INT64,
    NON_NEGATIVE_INT,
    NON_NEGATIVE_NUMBER,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    TEXT,
    Rule,
    check_section,
    check_storable,
    check_values,
    choice,
    integer,
    is_int,
    is_number,
    list_of,
    mapping,
    nullable,
    number,
    shown,
    unstorable,
)

__all__ = [
    "import_sacred_without_pandas",
    "INSPECTION_COMMANDS",
    "INT64",
    "is_int",
    "is_number",
    "shown",
    "Rule",
    "nullable",
    "integer",
    "number",
    "POSITIVE_INT",
    "NON_NEGATIVE_INT",
    "POSITIVE_NUMBER",
    "NON_NEGATIVE_NUMBER",
    "BOOLEAN",
    "TEXT",
    "choice",
    "list_of",
    "mapping",
    "unstorable",
    "check_storable",
    "check_section",
    "check_values",
]
