"""Files on hostile ground: what lnexp reads must be a regular file (a FIFO must not hang it, `/dev/zero`
must not eat memory), what it writes is written whole or not at all, and never through a planted link.

- `read_regular` / `map_regular`: regular files only; bounded reads for configs, memory maps for data.
- `atomic_write`: a new file under a random name, created O_EXCL|O_NOFOLLOW, renamed over the target;
  removed on any failure, and a failed write raises its own OSError (ENOSPC), naming the file.
- `try_lock`: an advisory `flock`, released by the kernel when its process dies (even by kill -9).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

CONFIG_LIMIT = 2**20  # a config is a few KiB; a larger "config" is a mistake (or /dev/zero's cousin)


class FileProblem(Exception):
    """Why a file cannot be read, in a few words ("no such file"); callers add the path or key."""


class MissingFile(FileProblem):
    """The file does not exist."""


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def open_regular(path: str | Path) -> BinaryIO:
    """Open a regular file for reading; FileProblem for anything else (without blocking on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO's open would block
    except FileNotFoundError:
        raise MissingFile("no such file") from None
    except OSError as exc:
        raise FileProblem(f"cannot read ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FileProblem(f"is {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_regular(path: str | Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes."""
    chunks, total = [], 0
    try:
        with open_regular(path) as f:
            while chunk := f.read(min(2**16, limit + 1 - total)):  # read(limit) would allocate limit
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise FileProblem(f"larger than the {_size(limit)} limit")
    except OSError as exc:
        raise FileProblem(f"cannot read ({exc.strerror})") from None
    return b"".join(chunks)


def map_regular(path: str | Path) -> bytes | mmap.mmap:
    """A regular file's bytes, memory-mapped copy-on-write (pages are read as they are used, and the
    file is never written); b"" for an empty file, which cannot be mapped."""
    try:
        with open_regular(path) as f:
            if os.fstat(f.fileno()).st_size == 0:
                return b""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except OSError as exc:
        raise FileProblem(f"cannot read ({exc.strerror})") from None


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n // 2**10} KiB"


class _Recorder:
    """A file object that remembers the OSError of a failed write: torch.save turns ENOSPC into a
    RuntimeError ("enforce fail at inline_container.cc"), and the cause is what a user needs."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as exc:
            self.error = exc
            raise


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], dir_fd: int | None = None) -> None:
    """Write a file through a temp file and a rename: a reader sees the old file or the new one.

    With `dir_fd`, `path` is a name inside that open directory (a run folder held by its writer)."""
    path = Path(path)
    name = f".{path.name}.{secrets.token_hex(6)}.tmp"
    tmp = name if dir_fd is not None else str(path.with_name(name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                 dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            recorder = _Recorder(f)
            try:
                write(recorder)  # type: ignore[arg-type]
                f.flush()
            except Exception as exc:
                cause = recorder.error or (exc if isinstance(exc, OSError) else None)
                if cause is not None:
                    raise OSError(cause.errno, cause.strerror, str(path)) from None
                raise
        os.replace(tmp, path if dir_fd is None else path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:  # e.g. the close flushed into a full disk
        _unlink(tmp, dir_fd)
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        _unlink(tmp, dir_fd)
        raise


def _unlink(name: str, dir_fd: int | None) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def try_lock(fd: int) -> bool:
    """Take an exclusive flock on `fd` without waiting; False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True
