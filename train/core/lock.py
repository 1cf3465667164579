"""One training run per run folder: a lock file naming its holder's pid and host.

A second run on the same ``--output-dir`` is refused in one line; a lock left by a process
that no longer runs on this host (a crash, ``kill -9``) is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path

from models.errors import UserError

LOCK_FILE = "run.lock"


class RunFolderInUse(UserError, FileExistsError):
    """Another live process trains in this run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_folder_lock(run_dir: Path):
    """Hold ``run_dir``'s lock inside the block (main process only)."""
    path = Path(run_dir) / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _holder(path)
            pid, host = holder.get("pid"), holder.get("host")
            if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                logging.getLogger("train").warning(
                    "taking over the lock of %s from pid %d, which no longer runs", run_dir, pid
                )
                path.unlink(missing_ok=True)
                continue
            raise RunFolderInUse(
                f"--output-dir {run_dir} is in use by pid {pid} on host {host} (lock file "
                f"{path}); wait for that run, or remove the lock file if it is gone"
            ) from None
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    try:
        yield
    finally:
        if _holder(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
