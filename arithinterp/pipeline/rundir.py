"""The run directory: checked, created and locked before the model loads.

A run writes only into ``runs/<name>/``. Before anything slow starts, the directory must be
creatable and writable, and be empty or a run of ours (it holds ``config.yaml``); then a lock
file taken with an exclusive create (never check-then-write) keeps a second process out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

from arithinterp.errors import OutputError

__all__ = ["LOCK_FILE", "acquire_lock", "claimed_run_dir", "prepare_run_dir"]

LOCK_FILE = ".lock"
_CONFIG_FILE = "config.yaml"


@contextlib.contextmanager
def claimed_run_dir(run_dir: Path) -> Iterator[Path]:
    """Create and lock ``run_dir`` (:func:`prepare_run_dir`, :func:`acquire_lock`) for the
    block. On the way out the lock goes, and so do the directories this call created if they
    are still empty: a run refused before its first write leaves nothing behind."""
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()][::-1]
    prepare_run_dir(run_dir)
    try:
        lock = acquire_lock(run_dir)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield run_dir
    finally:
        lock.unlink(missing_ok=True)
        _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    for folder in reversed(created):  # deepest first; a directory with anything in it stays
        with contextlib.suppress(OSError):
            folder.rmdir()


def prepare_run_dir(run_dir: Path) -> Path:
    """Create ``run_dir`` and check it can hold a run; :class:`OutputError` saying why not."""
    hint = "choose another --runs-dir (or runs_dir=...) or another pipeline name"
    for parent in (*reversed(run_dir.parents), run_dir):
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{parent} exists and is not a directory; {hint}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the run directory {run_dir}: {err.strerror or err}; {hint}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise OutputError(f"the run directory {run_dir} is not writable; {hint}")
    own = [p.name for p in run_dir.iterdir() if not p.name.startswith(".")]
    if own and not (run_dir / _CONFIG_FILE).is_file():
        shown = ", ".join(sorted(own)[:5])
        raise OutputError(
            f"{run_dir} holds files that are not a pipeline run ({shown}); a run would write "
            f"its steps among them. {hint[0].upper()}{hint[1:]}"
        )
    return run_dir


def acquire_lock(run_dir: Path) -> Path:
    """Take ``run_dir/.lock`` (created exclusively, holding this process id) or raise
    :class:`OutputError` naming the process that holds it and how to clear a stale lock."""
    lock = run_dir / LOCK_FILE
    for _attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _owner(lock)
            if pid is None and _age(lock) < 10.0:  # just created; its owner is writing its id
                raise OutputError(f"{run_dir} is being locked by another run; if none is active, "
                                  f"delete {lock} and rerun") from None
            if pid is not None and pid != os.getpid() and _alive(pid):
                raise OutputError(
                    f"{run_dir} is being written by process {pid}; wait for it or stop it. If no "
                    f"such run is active (the process id was reused), delete {lock} and rerun"
                ) from None
            lock.unlink(missing_ok=True)  # left by a run that died, or by this process
            continue
        except OSError as err:
            raise OutputError(f"cannot create the lock file {lock}: {err.strerror or err}") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return lock
    raise OutputError(f"another run took {lock} at the same moment; if none is active, delete it")


def _owner(lock: Path) -> int | None:
    try:
        text = lock.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as err:  # EPERM: it exists but belongs to another user
        return err.errno == errno.EPERM
    return True
