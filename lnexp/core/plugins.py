"""Plugins: a researcher's own layouts, norms, probes and suites, from a Python file, in the manner of
fairseq's `--user-dir`.

A plugin is a Python file that registers what it brings, as the built-ins do:

    from lnexp.core.layouts import Layout, Where, register_layout, register_norm
    from lnexp.core.probe_kinds import ProbeKind, register_probe

    register_layout(Layout("peri", "Peri-LN", "x = x + LN(F(LN(x)))", "my notes",
                           norm_at=Where.INPUT, out_norm=True, final_norm=True))

It is named by `plugins: [file.py]` in a config (relative to the config's folder) or by
`--plugin file.py`; the resolved config keeps its absolute path, so every process that validates the
config (sweep workers) loads it again, and meta.json records its sha256. A file runs once per
process: the bytes hashed are the bytes executed.

A run folder is data, whoever sent it: reading one (compare, plot, runs, export, a sweep or
reproduction reusing it) never loads the plugins its config names. Loading its model (`generate`,
`decode-stats`, `translate`, `train --resume`) needs them: `trusted` loads only files the user named
with `--plugin` whose sha256 is the one the run's meta.json recorded.
"""

from __future__ import annotations

import hashlib
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lnexp.core.errors import LnexpError
from lnexp.core.files import CONFIG_LIMIT, FileProblem, read_regular


class PluginError(LnexpError):
    """A plugin file that cannot be read or run: one line, naming the file."""


_LOADED: dict[Path, str] = {}  # resolved path -> sha256 of the bytes that ran


def _read(path: str | Path) -> tuple[Path, bytes]:
    resolved = Path(path).expanduser().resolve()
    try:
        return resolved, read_regular(resolved, CONFIG_LIMIT)
    except FileProblem as exc:
        raise PluginError(f"{resolved}: {exc}") from None


def sha256(path: str | Path) -> str:
    """A plugin file's sha256, without running it."""
    return hashlib.sha256(_read(path)[1]).hexdigest()


def load(path: str | Path, expected: str | None = None) -> str:
    """Run the plugin file once in this process (its registrations stay); its content's sha256.
    With `expected`, the file runs only if its sha256 is that one."""
    resolved, source = _read(path)
    digest = hashlib.sha256(source).hexdigest()
    if expected is not None and digest != expected:
        raise PluginError(f"{resolved}: sha256 {digest[:12]}…, not the trusted {expected[:12]}…")
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


def trusted(listed: Any, recorded: Any, given: Sequence[str | Path], where: str | Path) -> list[str]:
    """The plugins a run folder's model needs, loaded only from files the user trusts: each path its
    config lists (`listed`) must be matched by a `--plugin` file (`given`) whose sha256 is the one
    its meta.json recorded for that path (`recorded`, as `load_all` wrote it). The given files are
    all loaded; returned are the matching files' paths, in the config's order, to stand in for the
    listed ones. PluginError (one line, naming the run folder `where`, the plugin and `--plugin`)
    for a plugin without a recorded sha256 or without a trusted file of that sha256."""
    if not isinstance(listed, list) or not all(isinstance(p, str) and p for p in listed):
        raise PluginError(f"{where}: config.yaml: plugins: must be a list of Python file paths")
    hashes = {r.get("path"): r.get("sha256") for r in recorded if isinstance(r, dict)} \
        if isinstance(recorded, list) else {}
    offered = {sha256(path): str(Path(path).expanduser().resolve()) for path in given}
    chosen = []
    for path in listed:
        digest = hashes.get(path)
        if not isinstance(digest, str):
            raise PluginError(f"{where}: its model needs the plugin {path}, and its meta.json records no "
                              "sha256 for it, so no file can be trusted as that plugin")
        if digest not in offered:
            why = f"no --plugin file has its sha256 ({digest[:12]}…)" if given else "loading it runs its code"
            raise PluginError(f"{where}: its model needs the plugin {path}; {why}: pass --plugin FILE, "
                              "that file (or a copy with the same sha256), to trust it")
        chosen.append(offered[digest])
    for digest, path in offered.items():
        load(path, expected=digest)
    return list(dict.fromkeys(chosen))
