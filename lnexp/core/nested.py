"""Config dicts as dotted keys (`optim.lr`), for tables and loggers; imports nothing heavy, so readers of
run folders (compare, runs) stay fast."""

from __future__ import annotations

from typing import Any


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.001}} -> {"optim.lr": 0.001}: the keys `--set` takes."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
