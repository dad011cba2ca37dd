"""Sacred ingredients: one per concern (data, model, optimizer, seeding), each a config scope plus captured factories."""

# Sacred commands that only show the config: they must work even when the config cannot run.
INSPECTION_COMMANDS = frozenset(
    {"print_config", "print_named_configs", "print_dependencies", "save_config"}
)
