"""One run at a time per workdir: a second process started on a workdir in use is refused, naming the one using it.

The lock is `flock` on `<workdir>/.lock`, held for the whole run. The operating system releases it when its holder
exits, however it exits (SIGKILL too), so a lock is never left stale. The file holds the holder's pid, host, start
time and command line, for the refusal's message; it stays in the workdir between runs (deleting it would let two
processes lock two different files of one name). A multi-host run takes one lock, on process 0: its processes share
the workdir by design.

A workdir that cannot be created or opened is not locked (the stage that writes there reports it); nor is one on a
filesystem without locks (some network filesystems), with a warning.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time

from absl import logging

from aujax import rundir

class WorkdirInUseError(RuntimeError):
    """Another process holds the workdir's lock."""


@contextlib.contextmanager
def held(workdir: str):
    """Hold the lock of `workdir` (created if missing) within; WorkdirInUseError where another process holds it."""
    path = rundir.RunDir(workdir).lock
    try:
        os.makedirs(workdir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        fd = None
    if fd is None:
        yield
        return
    try:
        if _lock(fd, workdir, path):
            _write_holder(fd)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, workdir: str, path: str) -> bool:
    """Lock `fd` (the open `path`) without waiting; False where the filesystem has no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise WorkdirInUseError(f"--workdir={workdir} is in use by {_holder(fd)} ({path}); wait for "
                                "it to end, or use another --workdir") from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        logging.warning("%s: cannot lock (%s): nothing stops a second run on this workdir", path, e.strerror)
        return False
    return True


def _write_holder(fd: int) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)


def _holder(fd: int) -> str:
    """'process 1234 on host gpu-7 (since 2026-12-01 21:00:15: python -m aujax.main ...)' from the lock file."""
    try:
        holder = json.loads(os.pread(fd, 1 << 16, 0))
        return (f"process {holder['pid']} on host {holder['host']} (since {holder['started']}: "
                f"{holder['command']})")
    except (ValueError, KeyError, TypeError):  # the holder has locked the file but not yet written it
        return "another process"
