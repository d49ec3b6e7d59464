"""One pipeline process per cache directory.

Two ``doit`` processes on one directory would both write doit's dependency
database (written once at the end of a run: the last writer wins and the
other run's work is forgotten) and race on the lock file. So a run takes an
exclusive ``flock`` on ``<cache_dir>/run.lock`` before loading any task and
holds it until the process exits; a second run is refused at once with a
BusyError naming the holder's pid, not queued and not allowed to corrupt
anything. The kernel drops the lock when the holder dies, even by SIGKILL,
so a killed run never leaves a stale lock behind (the pid written in the
file is only for the message).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from pipeline.errors import BusyError

__all__ = ["LOCK_NAME", "RunLock", "hold_directory"]

LOCK_NAME = "run.lock"

_held: dict[Path, RunLock] = {}
_held_guard = threading.Lock()


class RunLock:
    """An exclusive, non-blocking flock on ``<directory>/run.lock``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(os.path.abspath(directory))
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise BusyError(
                f"{self.directory} is in use by another pipeline run (pid {holder}); "
                "wait for it to finish, or give this run its own cache_dir") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            # Closing the descriptor drops the flock; the file stays for the next run.
            os.close(self._fd)
            self._fd = None


def hold_directory(directory: Path) -> RunLock:
    """Take the run lock for ``directory`` for the rest of this process.

    Re-entrant within one process (a dodo file imported twice, or tests that
    run several loads in one interpreter): flock conflicts between two open
    descriptions even in the same process, so the held lock is reused.
    """
    key = Path(os.path.abspath(directory))
    with _held_guard:
        lock = _held.get(key)
        if lock is not None and lock.held:
            return lock
        lock = RunLock(key)
        lock.acquire()
        _held[key] = lock
        return lock
