"""One live topology service per state dir: an exclusive lock held for the service's life.

A state dir holds the pipelines of the service that runs them: their step configs, discovery
files, logs and the pids and ports of their processes. A second service on the same dir would
bring those pipelines back a second time (new processes, rewritten discovery files) under the
first one's feet. So, as databases and Jupyter do, the service takes ``<state-dir>/owner.lock``
with ``flock(LOCK_EX | LOCK_NB)`` before it writes or restores anything, and keeps it until it
exits; the kernel drops the lock when the process ends however it ends, so a crashed owner's
dir is adopted by the next service. Who holds it (pid, address, since when) is in
``<state-dir>/owner.json``, replaced whole, so a refused service can name the owner.

Knows files and locks, nothing of pipelines or HTTP.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from topology.backend import BackendError

LOCK_FILE = "owner.lock"
OWNER_FILE = "owner.json"


class StateDirTaken(BackendError):
    """Another live service owns the state dir; the message names it and the way out."""

    def __init__(self, state_dir: Path, owner: dict[str, Any]) -> None:
        self.state_dir = state_dir
        self.owner = owner
        pid = owner.get("pid")
        who = f"the topology service pid {pid}" if pid else "another topology service"
        where = f" at {owner['address']}" if owner.get("address") else ""
        since = f" since {owner['since']}" if owner.get("since") else ""
        super().__init__(
            f"the state dir {state_dir} belongs to {who}{where}{since}, which keeps serving its "
            "pipelines; this one changes nothing there. To run a second service, give it a "
            "state dir of its own: --state-dir DIR (or STEPCHAIN_STATE_DIR)")


@dataclass
class StateDirOwner:
    """The held lock of one state dir (``claim``); ``release`` or process exit drops it."""

    state_dir: Path
    _fd: int | None

    @classmethod
    def claim(cls, state_dir: Path) -> StateDirOwner:
        """Takes the state dir's lock, creating the dir if needed; ``StateDirTaken`` naming the
        live owner when another process holds it (nothing in the dir is changed then)."""
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        # Not inherited by step processes (Python's descriptors are close-on-exec): a step left
        # running by a crashed service must not keep its dir locked.
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirTaken(state_dir, read_owner(state_dir)) from None
        owner = cls(state_dir, fd)
        owner.announce(None)
        return owner

    def announce(self, address: str | None) -> None:
        """Records this process (and the address it serves, once bound) as the owner."""
        record = {"pid": os.getpid(), "address": address,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        partial = self.state_dir / f".{OWNER_FILE}.{os.getpid()}"
        partial.write_text(json.dumps(record), encoding="utf-8")
        partial.replace(self.state_dir / OWNER_FILE)

    def release(self) -> None:
        """Drops the lock (and the owner record): another service may take the dir."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self.state_dir / OWNER_FILE).unlink()
        os.close(self._fd)  # closing the only descriptor releases the flock
        self._fd = None


def read_owner(state_dir: Path) -> dict[str, Any]:
    """The recorded owner of `state_dir` (empty when none or unreadable)."""
    try:
        record = json.loads((Path(state_dir) / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
