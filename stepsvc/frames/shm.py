"""Frames in shared memory between steps on one host: a small handle travels over gRPC.

A step writes its output into a segment (a file in the frame directory, ``/dev/shm`` or the
pod's in-memory ``emptyDir``) and sends a :class:`~stepchain.v1.step_pb2.SharedFrame` instead
of ``Image.data``; the next step maps the segment read-only and runs its kernel on it.

* **Where:** two processes share frames when they see the same frame directory on the same
  kernel. :func:`domain_of` names that (boot id, device and inode of the directory); a step
  advertises its domain in the initial metadata of every answer (:data:`DOMAIN_KEY`) and a
  sender uses shared memory only for an address whose advertised domain equals its own.
* **Lifetime:** a frame ends when the sender's call returns (whatever the outcome): its token is
  replaced, so the handle no longer opens, and the segment goes back to a small pool of the
  sender's (:data:`POOL_SEGMENTS`; fresh tmpfs pages cost ~5 ms per 1080p frame here, far
  more than the hop) or is unlinked. Pooled segments idle for :data:`POOL_IDLE_S` are
  unlinked, and all of them when the step stops. A process killed with SIGKILL cannot do any
  of that, so every segment's name carries its creator's pid namespace, pid and start time,
  and :meth:`FrameStore.sweep` (run by every step at start and every
  :data:`SWEEP_INTERVAL_S`) unlinks segments whose creator is gone. Receivers keep a few
  mappings of recent segments (:data:`MAPPING_CACHE`) and check the file and token on
  every use.
* **Trust:** a handle is input like any other. The receiver accepts only names of this
  pipeline's pattern (no path), regular files owned by its own user, a size that matches the
  handle and the image, and a header with the handle's random token; anything else is
  :class:`BadHandle` (INVALID_ARGUMENT), never a crash or a read outside the segment.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import logging
import mmap
import os
import re
import secrets
import stat
import struct
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from stepchain.v1 import step_pb2

__all__ = ["BadHandle", "FrameStore", "Mapped", "NotShared",
           "Segment", "ShmError", "domain_of", "segment_prefix"]

log = logging.getLogger("stepchain.shm")

#: Default frame directory (``--shm-dir``, ``STEPCHAIN_SHM_DIR``).
DEFAULT_DIR = "/dev/shm"
#: Seconds between sweeps for segments of dead processes.
SWEEP_INTERVAL_S = 2.0
#: Idle segments a store keeps for reuse, and how long one may stay idle.
POOL_SEGMENTS = 8
POOL_IDLE_S = 10.0
#: Mappings of other processes' segments a store keeps open for reuse.
MAPPING_CACHE = 16
#: Segment header: magic, payload size, 16-byte token; the pixels start at HEADER_SIZE.
MAGIC = b"STEPCHN\x01"
HEADER = struct.Struct("<8sQ16s")
HEADER_SIZE = 64
TOKEN_BYTES = 16
#: Segment numbers, unique in the process (several stores may live in one process).
_SEQUENCE = itertools.count(1)
_NAME = re.compile(r"^stepchain-[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?-(\d+)-(\d+)-(\d+)-(\d+)$")


class ShmError(ValueError):
    """A shared-memory handle that cannot be used."""


class NotShared(ShmError):
    """The handle is from another domain (another host or pod): resend the pixels as bytes."""


class BadHandle(ShmError):
    """A forged, stale, foreign or out-of-bounds handle (answered with INVALID_ARGUMENT)."""


def segment_prefix(pipeline_id: str) -> str:
    """``stepchain-<pipeline>-``: the names of one pipeline's segments (DNS-1123-ish id)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", pipeline_id.lower()).strip("-")[:48].strip("-")
    return f"stepchain-{slug or 'pipeline'}-"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "no-boot-id"


def domain_of(directory: str) -> str:
    """Who can read segments in `directory`: same kernel (boot id), same directory instance."""
    st = os.stat(directory)
    return f"{_boot_id()}:{st.st_dev}:{st.st_ino}"


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (pid reuse check); None if it
    exited."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: fields after the last ')'
    fields = stat_line[stat_line.rfind(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):  # killed, not yet reaped by its parent: gone all the same
        return None
    return int(fields[19])


@dataclass
class Segment:
    """A segment this process created: write the frame into ``pixels``, send ``handle``."""

    name: str
    size: int
    token: bytes
    domain: str
    pixels: np.ndarray
    _map: mmap.mmap
    _store: FrameStore

    def handle(self) -> step_pb2.SharedFrame:
        return step_pb2.SharedFrame(name=self.name, size=self.size, token=self.token,
                                    domain=self.domain)

    def close(self) -> None:
        """Unlinks the segment and unmaps it (idempotent)."""
        self._store._release(self)


@dataclass
class Mapped:
    """A segment opened from a handle, read-only: ``data`` views its pixels."""

    data: memoryview
    _map: mmap.mmap
    _closed: bool = field(default=False)
    #: False for a mapping the store caches for the next request.
    _owned: bool = field(default=True)

    def pixels(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The segment's bytes as an H x W x C array (writable if opened writable)."""
        return np.frombuffer(self.data, dtype=np.uint8).reshape(shape)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(BufferError):  # exported: released when the array is freed
            self.data.release()
        if self._owned:
            with contextlib.suppress(BufferError):  # a view remains: unmapped when it is freed
                self._map.close()


class FrameStore:
    """This process's segments in `directory` for pipeline `pipeline_id`."""

    def __init__(self, directory: str, pipeline_id: str, *, max_bytes: int) -> None:
        self.directory = directory
        self.prefix = segment_prefix(pipeline_id)
        self.max_bytes = max_bytes
        self.domain = domain_of(directory)
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._uid = os.geteuid()
        pid = os.getpid()
        start = _start_time(pid) or 0
        self._creator = f"{_pid_namespace()}-{pid}-{start}-"
        self._lock = threading.Lock()
        self._live: dict[str, Segment] = {}
        self._idle: list[tuple[float, Segment]] = []
        self._maps: dict[tuple[str, bool], tuple[int, mmap.mmap]] = {}
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    @classmethod
    def open_dir(cls, directory: str, pipeline_id: str, *, max_bytes: int) -> FrameStore | None:
        """A store in `directory`, or None (logged) where it cannot be used."""
        if not os.path.isdir(directory) or not os.access(directory, os.W_OK | os.X_OK):
            log.info("shared memory off: %s is not a writable directory", directory)
            return None
        return cls(directory, pipeline_id, max_bytes=max_bytes)

    # -- sending ----------------------------------------------------------------------------------

    def create(self, shape: tuple[int, int, int]) -> Segment:
        """A new segment with room for an H x W x C frame (``pixels`` is writable)."""
        size = shape[0] * shape[1] * shape[2]
        with self._lock:
            pooled = next((i for i, (_, s) in enumerate(self._idle) if s.size == size), None)
            segment = self._idle.pop(pooled)[1] if pooled is not None else None
        if segment is not None:  # a fresh token: handles to its last frame no longer open
            segment.token = secrets.token_bytes(TOKEN_BYTES)
            segment._map[:HEADER.size] = HEADER.pack(MAGIC, size, segment.token)
            segment.pixels = np.frombuffer(segment._map, dtype=np.uint8, count=size,
                                           offset=HEADER_SIZE).reshape(shape)
            with self._lock:
                self._live[segment.name] = segment
            return segment
        name = f"{self.prefix}{self._creator}{next(_SEQUENCE)}"
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=self._dir_fd)
        try:
            os.ftruncate(fd, HEADER_SIZE + size)
            # MAP_POPULATE: the pages are allocated in one go instead of one fault per 4 KiB.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            region = mmap.mmap(fd, HEADER_SIZE + size, flags=flags)
        except BaseException:
            os.unlink(name, dir_fd=self._dir_fd)
            raise
        finally:
            os.close(fd)
        token = secrets.token_bytes(TOKEN_BYTES)
        region[:HEADER.size] = HEADER.pack(MAGIC, size, token)
        pixels = np.frombuffer(region, dtype=np.uint8, count=size, offset=HEADER_SIZE)
        segment = Segment(name, size, token, self.domain, pixels.reshape(shape), region, self)
        with self._lock:
            self._live[name] = segment
        return segment

    def _release(self, segment: Segment) -> None:
        with self._lock:
            if self._live.pop(segment.name, None) is None:
                return
            # the frame ends here: its token is void at once; the memory may be reused
            segment._map[:HEADER.size] = HEADER.pack(MAGIC, segment.size, bytes(TOKEN_BYTES))
            if not self._stop.is_set() and len(self._idle) < POOL_SEGMENTS:
                self._idle.append((time.monotonic(), segment))
                return
        self._unlink(segment)

    def _unlink(self, segment: Segment) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment.name, dir_fd=self._dir_fd)
        segment.pixels = np.empty((0, 0, 0), dtype=np.uint8)
        with contextlib.suppress(BufferError):  # a view remains: unmapped when it is freed
            segment._map.close()

    # -- receiving --------------------------------------------------------------------------------

    def open(self, handle: step_pb2.SharedFrame, *, writable: bool = False) -> Mapped:
        """Maps the segment `handle` names after checking everything about it: read-only, or
        `writable` for a caller's reply segment (the final image goes there)."""
        if handle.domain != self.domain:
            raise NotShared(f"the shared-memory handle is from domain {handle.domain!r}; this "
                            f"step reads {self.domain!r} only")
        name = handle.name
        match = _NAME.match(name)
        if match is None or not name.startswith(self.prefix):
            raise BadHandle(f"image.shm.name {name[:80]!r} is not a segment of this pipeline "
                            f"(expected {self.prefix}<pidns>-<pid>-<start>-<n>)")
        if not 0 < handle.size <= self.max_bytes:
            raise BadHandle(f"image.shm.size {handle.size} is outside 1..{self.max_bytes}")
        if len(handle.token) != TOKEN_BYTES:
            raise BadHandle(f"image.shm.token has {len(handle.token)} bytes, expected "
                            f"{TOKEN_BYTES}")
        try:
            # O_NONBLOCK: a FIFO under a valid-looking name must not block the step
            mode = os.O_RDWR if writable else os.O_RDONLY
            fd = os.open(name, mode | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=self._dir_fd)
        except FileNotFoundError:
            raise BadHandle(f"image.shm segment {name} does not exist (stale handle: its "
                            "request already ended)") from None
        except OSError as exc:
            raise BadHandle(f"image.shm segment {name} cannot be opened: "
                            f"{exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadHandle(f"image.shm segment {name} is not a regular file")
            if st.st_uid != self._uid:
                raise BadHandle(f"image.shm segment {name} belongs to uid {st.st_uid}, not to "
                                f"this step's uid {self._uid}")
            if st.st_size != HEADER_SIZE + handle.size:
                raise BadHandle(f"image.shm segment {name} holds {st.st_size - HEADER_SIZE} "
                                f"bytes, the handle says {handle.size}")
            key = (name, writable)
            # The view is taken under the lock: a cached mapping is only ever closed after it
            # left the cache, and close() of a mapping with a view is refused (BufferError), so
            # another request's eviction or the sweeper can never unmap it under this one.
            with self._lock:
                cached = self._maps.get(key)
                fresh = cached is None or cached[0] != st.st_ino
                if not fresh:
                    assert cached is not None
                    region, pinned = cached[1], memoryview(cached[1])
            if fresh:
                prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                region = mmap.mmap(fd, st.st_size, flags=flags, prot=prot)
                pinned = memoryview(region)  # before it is cached, for the same reason
        finally:
            os.close(fd)
        magic, size, token = HEADER.unpack_from(pinned)
        if magic != MAGIC or size != handle.size or not hmac.compare_digest(token, handle.token):
            pinned.release()
            if fresh:
                region.close()
            raise BadHandle(f"image.shm segment {name} does not match the handle (wrong token "
                            "or size: forged or stale)")
        view = pinned[HEADER_SIZE:HEADER_SIZE + handle.size]
        if fresh:
            self._cache_mapping(key, st.st_ino, region)
        return Mapped(view, region, _owned=False)

    def _cache_mapping(self, key: tuple[str, bool], inode: int, region: mmap.mmap) -> None:
        with self._lock:
            old = self._maps.pop(key, None)
            self._maps[key] = (inode, region)
            evicted = [old] if old else []
            while len(self._maps) > MAPPING_CACHE:
                evicted.append(self._maps.pop(next(iter(self._maps))))
        for _, stale in evicted:
            with contextlib.suppress(BufferError):  # still in use: unmapped when freed
                stale.close()

    def _drop_gone_mappings(self) -> None:
        """Unmaps cached segments that were unlinked (or replaced) since."""
        with self._lock:
            items = list(self._maps.items())
        for (name, writable), (inode, region) in items:
            try:
                alive = os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False).st_ino == inode
            except FileNotFoundError:
                alive = False
            if not alive:
                with self._lock:
                    if self._maps.get((name, writable), (0, None))[1] is region:
                        del self._maps[(name, writable)]
                with contextlib.suppress(BufferError):
                    region.close()

    def _expire_idle(self, max_idle: float) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [s for t, s in self._idle if now - t >= max_idle]
            self._idle = [(t, s) for t, s in self._idle if now - t < max_idle]
        for segment in expired:
            self._unlink(segment)

    # -- cleaning up ------------------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Unlinks segments (any pipeline) whose creator in this pid namespace is gone."""
        removed: list[str] = []
        own_ns = str(_pid_namespace())
        try:
            names = os.listdir(self._dir_fd)
        except OSError:
            return removed
        for name in names:
            match = _NAME.match(name)
            if match is None or match.group(2) != own_ns:
                continue
            pid, start = int(match.group(3)), int(match.group(4))
            alive = _start_time(pid)
            if alive is not None and alive == start:
                continue
            try:
                os.unlink(name, dir_fd=self._dir_fd)
                removed.append(name)
            except FileNotFoundError:
                pass
        if removed:
            log.info("removed %d shared-memory segment(s) of exited processes", len(removed))
        return removed

    def start_sweeping(self, interval: float = SWEEP_INTERVAL_S) -> None:
        """Sweeps now and then every `interval` seconds in a daemon thread until close()."""
        self.sweep()

        def loop() -> None:
            while not self._stop.wait(interval):
                self.sweep()
                self._expire_idle(POOL_IDLE_S)
                self._drop_gone_mappings()

        self._sweeper = threading.Thread(target=loop, name="shm-sweeper", daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        """Stops sweeping and unlinks every segment this process still has."""
        self._stop.set()
        with self._lock:
            live = list(self._live.values())
        for segment in live:
            segment.close()
        self._expire_idle(0.0)
        with self._lock:
            maps = [region for _, region in self._maps.values()]
            self._maps.clear()
        for region in maps:
            with contextlib.suppress(BufferError):
                region.close()
        if self._sweeper is not None:
            self._sweeper.join(5)
        with contextlib.suppress(OSError):
            os.close(self._dir_fd)
