"""Plugins: a researcher's own layouts, norms, probes and suites, from a Python file, in the manner of
fairseq's `--user-dir`.

A plugin is a Python file that registers what it brings, as the built-ins do:

    from lnexp.core.layouts import Layout, Where, register_layout, register_norm
    from lnexp.core.probe_kinds import ProbeKind, register_probe

    register_layout(Layout("peri", "Peri-LN", "x = x + LN(F(LN(x)))", "my notes",
                           norm_at=Where.INPUT, out_norm=True, final_norm=True))

It is named by `plugins: [file.py]` in a config (relative to the config's folder) or by
`--plugin file.py`; the resolved config keeps its absolute path, so every process that reads the
config (sweep workers, `--resume`, `generate`) loads it again, and meta.json records its sha256. A
file runs once per process: the bytes hashed are the bytes executed.
"""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path
from typing import Any

from lnexp.core.errors import LnexpError
from lnexp.core.files import CONFIG_LIMIT, FileProblem, read_regular


class PluginError(LnexpError):
    """A plugin file that cannot be read or run: one line, naming the file."""


_LOADED: dict[Path, str] = {}  # resolved path -> sha256 of the bytes that ran


def load(path: str | Path) -> str:
    """Run the plugin file once in this process (its registrations stay); its content's sha256."""
    resolved = Path(path).expanduser().resolve()
    try:
        source = read_regular(resolved, CONFIG_LIMIT)
    except FileProblem as exc:
        raise PluginError(f"{resolved}: {exc}") from None
    digest = hashlib.sha256(source).hexdigest()
    if resolved in _LOADED:
        if _LOADED[resolved] != digest:
            raise PluginError(f"{resolved}: changed since this process loaded it")
        return digest
    name = f"lnexp_plugin_{resolved.stem}_{digest[:12]}"
    module = types.ModuleType(name)
    module.__file__ = str(resolved)
    sys.modules[name] = module  # dataclasses and pickling look their module up by name
    try:
        exec(compile(source, str(resolved), "exec"), module.__dict__)  # noqa: S102 (a plugin is code)
    except Exception as exc:  # whatever the file raises, the user gets one line naming it
        del sys.modules[name]
        where = next((f" (line {frame.lineno})" for frame in _frames(exc) if frame.filename == str(resolved)),
                     "")
        raise PluginError(f"{resolved}{where}: {type(exc).__name__}: {exc}") from None
    _LOADED[resolved] = digest
    return digest


def _frames(exc: BaseException) -> list[Any]:
    import traceback

    if isinstance(exc, SyntaxError):
        return [types.SimpleNamespace(filename=exc.filename, lineno=exc.lineno)]
    return list(reversed(traceback.extract_tb(exc.__traceback__)))


def load_all(paths: list[str]) -> list[dict[str, str]]:
    """Load every plugin; what meta.json records of them: path and sha256."""
    return [{"path": str(Path(p).expanduser().resolve()), "sha256": load(p)} for p in paths]
