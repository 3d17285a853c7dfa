"""One run per results folder: an exclusive ``flock`` on ``<run>/.lock`` while a run writes it.

Two runs writing one folder would mix their outputs. ``run_lock`` takes the lock and writes the
holder's pid, host and start time into the file; a second run fails at once with one sentence
naming that process. The kernel drops a ``flock`` when its process dies (kill -9 included), so a
dead run's lock is never in the way. The lock is re-entrant within one process (a sub-run of the
same folder); the plt worker (:mod:`clt_bench.plt_worker`) writes under its parent's lock.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clt_bench.errors import UserError

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"

# resolved run folder -> [file descriptor, depth] of the locks this process holds
_HELD: dict[Path, list[int]] = {}


def holder(run_dir: str | os.PathLike[str]) -> str:
    """What the lock file says about its holder ("pid 123 on host since ..."), or ""."""
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return ""
    if len(text) < 2 or not text[0].isdigit():
        return ""
    return f"pid {text[0]} on {text[1]}" + (f" since {' '.join(text[2:])}" if text[2:] else "")


def is_locked(run_dir: str | os.PathLike[str]) -> bool:
    """Whether a live process holds ``run_dir``'s lock (this process's own locks included)."""
    path = Path(run_dir).resolve()
    if path in _HELD:
        return True
    if fcntl is None or not (path / LOCK_NAME).is_file():
        return False
    fd = os.open(path / LOCK_NAME, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a shared lock taken above
    return False


@contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the exclusive lock of ``run_dir`` (created if missing) for the ``with`` block.

    Raises ``UserError`` naming the holder when another live process holds it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _HELD:  # re-entrant: this process already holds it
        _HELD[key][1] += 1
        try:
            yield run_dir
        finally:
            _HELD[key][1] -= 1
        return
    if fcntl is None:  # pragma: no cover
        yield run_dir
        return
    fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        who = holder(key) or "another process"
        raise UserError(
            f"{run_dir} is in use by another clt-bench run ({who}); wait for it to finish or "
            "write to another --out."
        ) from None
    except OSError as err:  # a file system without locks (some network mounts): run unlocked
        os.close(fd)
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        log.warning("cannot lock %s (%s); two runs of this folder would not be stopped", key, err)
        yield run_dir
        return
    except BaseException:
        os.close(fd)
        raise
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {stamp}\n".encode(), 0)
    _HELD[key] = [fd, 1]
    try:
        yield run_dir
    finally:
        del _HELD[key]
        try:
            os.ftruncate(fd, 0)  # the file stays (removing it would race a waiting run)
        finally:
            os.close(fd)  # releases the flock
