"""Process supervision for the local backend: spawn, restart with backoff, stop, reap.

Knows processes, logs and signals, nothing of pipelines: :class:`SupervisedProcess` is one child
(its command line, environment and log file), :meth:`SupervisedProcess.supervise` restarts it
after it exited on its own, following a :class:`RestartPolicy` (bounded restarts per window,
doubling backoff), and gives up with a message that ends with its log. :class:`SupervisorLoop`
runs a supervising callback on a thread; :func:`stop_all` and :func:`reap` stop processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: A process restarted this many times within RESTART_WINDOW_S is not restarted again (failed).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
#: Delay before the first restart in the window; each further one doubles it.
RESTART_BACKOFF_S = 0.5
#: Seconds between SIGTERM and SIGKILL beyond the drain grace (the interpreter's own exit).
KILL_MARGIN_S = 2.0

log = logging.getLogger(__name__)


class RestartPolicy:
    """When to restart a process that exited: bounded restarts per window, doubling backoff."""

    def __init__(self, max_restarts: int = MAX_RESTARTS, window_s: float = RESTART_WINDOW_S,
                 backoff_s: float = RESTART_BACKOFF_S) -> None:
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_s = backoff_s
        self._restarts: deque[float] = deque()

    def next_restart(self, now: float) -> float | None:
        """The time to restart a process found exited at `now`; None: give up (too many)."""
        while self._restarts and self._restarts[0] <= now - self.window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self.max_restarts:
            return None
        return now + self.backoff_s * 2 ** len(self._restarts)

    def restarted(self, at: float) -> None:
        """Records a restart made at `at`."""
        self._restarts.append(at)


def spawn(command: Sequence[str], env: dict[str, str], cwd: Path, log_path: Path, *,
          append_log: bool, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """Starts `command` writing stdout and stderr to `log_path` (appended on restarts: the log
    keeps why the previous process ended); `pass_fds` are inherited (e.g. a lifeline)."""
    with open(log_path, "ab" if append_log else "wb") as log_file:
        # A session of its own: a Ctrl-C in the terminal reaches the service, which then
        # stops its children in order, instead of killing the children under it.
        return subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True, pass_fds=tuple(pass_fds))


def log_tail(log_path: Path, lines: int = 15) -> str:
    """The last `lines` lines of a log file, or a note saying there is none."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass
class SupervisedProcess:
    """One child process and what it takes to start it again."""

    #: Says which process this is in messages, e.g. "step 1 (grayscale) of pipeline demo".
    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    policy: RestartPolicy
    process: subprocess.Popen[bytes]
    restarts: int = 0
    #: When the exited process is restarted; None while it runs.
    restart_at: float | None = None
    #: Why the process is not restarted any more (None while supervised).
    failure: str | None = None
    #: Descriptors the process inherits, on every (re)start.
    pass_fds: tuple[int, ...] = ()

    @classmethod
    def start(cls, name: str, command: list[str], env: dict[str, str], cwd: Path,
              log_path: Path, policy: RestartPolicy,
              pass_fds: tuple[int, ...] = ()) -> SupervisedProcess:
        """Spawns `command` (its log file started anew) and returns it supervised."""
        process = spawn(command, env, cwd, log_path, append_log=False, pass_fds=pass_fds)
        return cls(name=name, command=command, env=env, cwd=cwd, log_path=log_path,
                   policy=policy, process=process, pass_fds=pass_fds)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        """Whether the current process has not exited."""
        return self.process.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The end of the process's log."""
        return log_tail(self.log_path, lines)

    def supervise(self, now: float) -> bool:
        """One look at the process at time `now`: if it exited on its own, schedule a restart
        (policy backoff) or, over the policy's bound, mark it failed; restart it when due.

        Returns True when it was restarted (it has a new pid).
        """
        if self.failure is not None:
            return False
        code = self.process.poll()
        if code is None:
            return False
        if self.restart_at is None:
            self.restart_at = self.policy.next_restart(now)
            if self.restart_at is None:
                self.failure = (
                    f"{self.name} exited with code {code} and was restarted "
                    f"{self.policy.max_restarts} times within {self.policy.window_s:.0f} s; "
                    f"it is not restarted again (PUT the pipeline to start it anew). Its log "
                    f"ends with:\n{self.tail()}")
                log.error("%s", self.failure)
                return False
            log.warning("%s exited with code %s; restarting it in %.1f s", self.name, code,
                        self.restart_at - now)
        if now < self.restart_at:
            return False
        self.process = spawn(self.command, self.env, self.cwd, self.log_path, append_log=True,
                             pass_fds=self.pass_fds)
        self.policy.restarted(now)
        self.restarts += 1
        self.restart_at = None
        return True


def stop_all(processes: Sequence[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM all (they drain in parallel), then SIGKILL whatever outlives the grace."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s + KILL_MARGIN_S
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has exited; only its parent has not reaped it yet)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def process_cmdline(pid: int) -> str:
    """The command line of `pid`, arguments joined by spaces ("" when it cannot be read)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace")
    except OSError:
        return ""


def reap(pid: int, marker: str, grace_s: float) -> bool:
    """Stops a process a previous owner left behind: SIGTERM, SIGKILL after the grace.

    Only if its command line still contains `marker` (pids get reused). True when stopped.
    """
    if pid <= 0 or not marker or marker not in process_cmdline(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s + KILL_MARGIN_S
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    return True


class SupervisorLoop:
    """Calls `supervise` every `interval_s` on a daemon thread until :meth:`close`."""

    def __init__(self, supervise: Callable[[], None], interval_s: float, name: str) -> None:
        self._supervise = supervise
        self._interval_s = interval_s
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.wait(self._interval_s):
            try:
                self._supervise()
            except Exception:  # the supervisor must outlive one bad round (e.g. a full disk)
                log.exception("supervising child processes failed; retrying")

    def close(self) -> None:
        """Stops the loop and waits for a round in progress (not from the loop's own thread)."""
        self._closed.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
