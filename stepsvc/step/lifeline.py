"""A lifeline from the process that started this step: when it dies, however (SIGKILL too),
the step stops instead of living on as an orphan.

The local backend of the topology service holds the write end of a pipe and passes the read end
to every step it starts (``STEPCHAIN_LIFELINE_FD``). Nobody ever writes to it: the read returns
only when the kernel closes the last write end, which happens when the service exits for any
reason. Unlike ``PR_SET_PDEATHSIG`` this does not depend on which of the service's threads
spawned the step (the death signal fires when that *thread* exits).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping

#: Environment variable naming the inherited read end of the lifeline pipe.
LIFELINE_ENV = "STEPCHAIN_LIFELINE_FD"

log = logging.getLogger("stepchain.step")


def lifeline_fd(environ: Mapping[str, str]) -> int | None:
    """The lifeline descriptor from the environment; None without one (or a bad value)."""
    text = environ.get(LIFELINE_ENV, "")
    if not text.isdigit():
        return None
    fd = int(text)
    try:
        os.fstat(fd)
    except OSError:
        log.warning("%s=%s names no open file; not watching a lifeline", LIFELINE_ENV, text)
        return None
    return fd


def watch_lifeline(fd: int, on_gone: Callable[[], None]) -> threading.Thread:
    """Calls `on_gone` (once, on a daemon thread) when the pipe's write end is closed."""

    def watch() -> None:
        while True:
            try:
                if os.read(fd, 4096) == b"":
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        log.warning("the topology service that started this step is gone; stopping")
        on_gone()

    thread = threading.Thread(target=watch, name="stepchain-lifeline", daemon=True)
    thread.start()
    return thread
