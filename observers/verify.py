"""Whether a rerun came out the same: every metric value bit for bit, and the final model's hash."""

from __future__ import annotations

import struct

from observers.provenance import short
from observers.store import RunStore


def same_bits(a, b) -> bool:
    """Equal to the last bit (NaN equals NaN, 0.0 differs from -0.0)."""
    if isinstance(a, float) or isinstance(b, float):
        try:
            return struct.pack("<d", a) == struct.pack("<d", b)
        except (struct.error, TypeError):
            return False
    return a == b


def metric_mismatch(name: str, then: dict, now: dict | None) -> str | None:
    """Where one metric's series first differs and by how much at most, or None if identical."""
    if now is None:
        return f"{name}: {len(then['values'])} values then, missing in the rerun"
    pairs_then = list(zip(then["steps"], then["values"]))
    pairs_now = list(zip(now["steps"], now["values"]))
    first = next(
        (
            i
            for i, (a, b) in enumerate(zip(pairs_then, pairs_now))
            if a[0] != b[0] or not same_bits(a[1], b[1])
        ),
        None,
    )
    if first is None and len(pairs_then) == len(pairs_now):
        return None
    gaps = [
        abs(a[1] - b[1])
        for a, b in zip(pairs_then, pairs_now)
        if a[0] == b[0] and isinstance(a[1], (int, float)) and isinstance(b[1], (int, float))
    ]
    largest = f"; largest absolute difference {max(gaps):.6g}" if gaps else ""
    if first is None:
        return (
            f"{name}: {len(pairs_then)} values then, {len(pairs_now)} now "
            f"(identical where both have one){largest}"
        )
    (step, value_then), (_, value_now) = pairs_then[first], pairs_now[first]
    return f"{name}: first differs at step {step} ({value_then!r} then, {value_now!r} now){largest}"


def compare_rerun(store: RunStore, run_id: int, then: dict, info_then: dict, new_id: int) -> bool:
    """Compare run new_id with run_id's recorded metrics and final model, value by value; print
    the verdict; True only on an exact match."""
    now = store.metrics(new_id)
    lines = [
        line for name in sorted(then) if (line := metric_mismatch(name, then[name], now.get(name)))
    ]
    lines += [f"{name}: only in the rerun" for name in sorted(set(now) - set(then))]
    model_then = info_then["final_model_sha256"]
    model_now = store.info(new_id).get("final_model_sha256")
    count = sum(len(series["values"]) for series in then.values())
    if not lines:
        print(f"verify: all {count} values of {len(then)} metrics matched bit for bit")
    else:
        print(f"verify: {len(lines)} of {len(set(then) | set(now))} metrics differ")
        for line in lines:
            print(f"  {line}")
    if model_then == model_now:
        print(f"verify: final model state identical (sha256 {short(model_then)})")
    else:
        print(
            f"verify: final model state differs (sha256 {short(model_then)} then, "
            f"{short(model_now)} now)"
        )
    matched = not lines and model_then == model_now
    print(
        f"verify: {'exact match' if matched else 'MISMATCH'} between run {run_id} "
        f"and its rerun, run {new_id}"
    )
    return matched
