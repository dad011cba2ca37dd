"""The user's own code from outside the checkout, on a rerun: found now the way the user's Python
finds it (working directory, PYTHONPATH, installed packages) and compared with the record.

A record only names modules and holds copies of their files; it never says where to look. Each
source a run recorded by absolute path is compared, by hash, with the file Python would import
now under the module name the run recorded for it; one that differs or is nowhere is a
difference of then against now. The recorded copies run only with --from-recorded-sources.
"""

from __future__ import annotations

from pathlib import Path

from ingredients.imports import module_file
from observers.provenance import Difference, sha256, short
from observers.records import RecordError, read_regular


def recorded_modules(info: dict) -> dict[str, str]:
    """{recorded file: module name} from info.outside_code.modules; other shapes give {}."""
    outside = info.get("outside_code") if isinstance(info, dict) else None
    modules = outside.get("modules") if isinstance(outside, dict) else None
    if not isinstance(modules, dict):
        return {}
    return {
        file: module
        for module, file in modules.items()
        if isinstance(module, str) and isinstance(file, str)
    }


def file_hash(path: str) -> str | None:
    """SHA-256 of a regular file (never a FIFO or a device), or None."""
    try:
        return sha256(read_regular(path))
    except (OSError, ValueError, RecordError):
        return None


def outside_differences(sources: dict[str, bytes], info: dict, cwd: Path) -> list[Difference]:
    """Each recorded source from outside the checkout whose module, as Python finds it now from
    `cwd`, has other bytes or is not found."""
    modules, found = recorded_modules(info), []
    for name, data in sorted(sources.items()):
        if not Path(name).is_absolute():
            continue
        then, module = f"sha256 {short(sha256(data))}", modules.get(name)
        now_file = module_file(module, [str(cwd)]) if module else None
        if now_file is None:
            where = (
                f"no module {module!r} on this Python's path or in {cwd}"
                if module
                else "no module name recorded for it"
            )
            found.append(Difference(f"source {name}", then, f"missing ({where})"))
            continue
        now = file_hash(now_file)
        if now != sha256(data):
            what = f"source {name}" + (f" (found now as {now_file})" if now_file != name else "")
            found.append(Difference(what, then, f"sha256 {short(now)}" if now else "unreadable"))
    return found
