"""Small file helpers shared by the stages: results are written atomically, so a crash never leaves half a file, and a
full disk is one clear error.

A file is written to `<path>.tmp` and renamed over `path` once complete (`os.replace`); a write that fails removes
its tmp file. A filesystem that is full (or a quota that is used up) raises `DiskFullError`, naming the path, the
bytes the write needed and the space free there.
"""

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write failed for want of space; the message names the path, the bytes needed and the bytes free."""


def write_json(path: str, value) -> None:
    """Write `value` as indented JSON to `path` (parents created), atomically."""
    data = json.dumps(value, indent=2).encode()
    _write_atomically(path, lambda f: f.write(data), len(data))


def write_npz(path: str, **arrays) -> None:
    """Write `arrays` to `path` as an uncompressed .npz (`np.savez`, parents created), atomically."""
    needed = sum(np.asarray(a).nbytes for a in arrays.values())
    _write_atomically(path, lambda f: np.savez(f, **arrays), needed)


def read_json(path: str, default=None):
    """The JSON value in `path`, or `default` when the file does not exist."""
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


def _write_atomically(path: str, write: Callable[[BinaryIO], object], needed: int) -> None:
    tmp = path + ".tmp"
    with disk_full_named(path, needed):
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(tmp, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:  # KeyboardInterrupt too: no tmp file is left behind
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise


@contextlib.contextmanager
def disk_full_named(path: str, needed: int | None):
    """Turns a full-disk error raised within into `DiskFullError` naming `path`, the `needed` bytes (None: unknown)
    and the space free on its filesystem.

    Other errors pass unchanged. A full disk is recognised in an OSError (ENOSPC, EDQUOT) and in the errors of
    libraries that carry the system's message, such as orbax's ValueError from its writer threads.
    """
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise DiskFullError(disk_full_message(path, needed)) from e


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from, says the filesystem is full or the quota used up."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
            return True
        if any(os.strerror(code) in str(error) for code in _FULL_ERRNOS):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_message(path: str, needed: int | None) -> str:
    """No space for `path`: what was needed, what is free there, and what to do."""
    need = f"{format_bytes(needed)} needed, " if needed is not None else ""
    return (f"no space left on device writing {path} (disk full or quota used up): {need}"
            f"{format_bytes(free_bytes(path))} free there; free some space and run the same command again (it "
            "resumes from the last complete checkpoint)")


def free_bytes(path: str) -> int:
    """The bytes free on the filesystem that holds `path` (or would hold it: its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def format_bytes(n: int) -> str:
    """1536 -> '1.5 kB', 3_000_000 -> '3.0 MB' (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
