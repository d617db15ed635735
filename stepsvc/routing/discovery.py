"""Discovery: which steps of this pipeline are active right now, and at which address.

Two backends behind one small protocol:

* ``kubernetes`` — :class:`stepsvc.routing.kubernetes.ConfigMapDiscovery`: a step is active
  while its ConfigMap (label ``pipeline_id=<id>``) exists; list + watch, cached.
* ``static:FILE`` — :class:`StaticDiscovery`: a JSON file ``{"1": "127.0.0.1:50052", ...}``
  that the topology service's local backend writes; reloaded when it changes. A step with
  replicas lists them all, ``{"1": ["127.0.0.1:50052", "127.0.0.1:50062"]}``, and is handed out
  as one gRPC target, ``ipv4:127.0.0.1:50052,127.0.0.1:50062``, that a round_robin channel
  balances over.

``active()`` is called on every request, so both answer from an in-memory snapshot.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)

#: How often StaticDiscovery.active() looks at the file's stat (seconds).
STATIC_CHECK_INTERVAL = 0.2


@runtime_checkable
class Discovery(Protocol):
    """Where the active steps of one pipeline are."""

    def start(self) -> None:
        """Begins watching; calling it again does nothing."""

    def active(self) -> dict[int, str]:
        """step_id -> "host:port" of every currently active step (a snapshot; cheap)."""
        ...

    def close(self) -> None:
        """Stops watching and releases what start() acquired."""


def parse_static_mapping(text: str, *, where: str = "static discovery file") -> dict[int, str]:
    """Parses the static discovery JSON ``{"<step id>": "host:port" | ["ip:port", ...]}``
    into step id -> gRPC target (a list becomes one ``ipv4:``/``ipv6:`` address-list target).

    Raises ValueError naming the offending entry if the text is not such a mapping.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: must be a JSON object mapping step ids to \"host:port\" (or "
                         f"a list of them), got {type(data).__name__}")
    mapping: dict[int, str] = {}
    for key, address in data.items():
        if not (isinstance(key, str) and _is_ascii_number(key)):
            raise ValueError(f"{where}: key {key!r} must be a step id (a non-negative integer)")
        try:
            mapping[int(key)] = step_target(address)
        except ValueError as exc:
            raise ValueError(f"{where}: step {key}: {exc}") from None
    return mapping


def step_target(address: object) -> str:
    """The gRPC target of a discovery entry: "host:port" as it is; a list of replicas'
    "ip:port" addresses as ``ipv4:a,b`` (``ipv6:[..]:p,...``), which round_robin balances over.

    Raises ValueError saying what an entry must look like.
    """
    if isinstance(address, str) and _is_address(address):
        return address
    if isinstance(address, list) and address:
        if not all(isinstance(a, str) and _is_address(a) for a in address):
            raise ValueError(f"every replica address must be \"host:port\", got {address!r}")
        families = {_ip_family(a) for a in address}
        if len(address) == 1 and families != {"ipv4"} and families != {"ipv6"}:
            return str(address[0])  # one replica by host name: as good as a plain string
        if len(families) != 1 or None in families:
            raise ValueError("a list of replica addresses must be IP addresses of one family "
                             f"(all IPv4 or all IPv6) so it forms one gRPC target, got {address!r}")
        return f"{families.pop()}:{','.join(address)}"
    raise ValueError(f"address must be \"host:port\" or a non-empty list of them, got {address!r}")


def _ip_family(address: str) -> str | None:
    host = address.rpartition(":")[0].strip("[]")
    try:
        return "ipv4" if ipaddress.ip_address(host).version == 4 else "ipv6"
    except ValueError:
        return None


def _is_address(value: object) -> bool:
    if not isinstance(value, str):
        return False
    host, sep, port = value.rpartition(":")
    return bool(sep and host and _is_ascii_number(port) and 0 < int(port) < 65536)


def _is_ascii_number(text: str) -> bool:
    """True for 0-9 only: str.isdigit() and int() also take other scripts' digits ("٣" is 3)."""
    return text.isascii() and text.isdigit()


def write_static_discovery(path: str | os.PathLike[str],
                           mapping: Mapping[int, str | Sequence[str]]) -> None:
    """Writes a static discovery file atomically (readers never see a half-written file).

    A step maps to "host:port", or to the list of its replicas' addresses.
    """
    entries: dict[str, str | list[str]] = {}
    for step_id in sorted(mapping):
        address = mapping[step_id]
        value: str | list[str] = address if isinstance(address, str) else list(address)
        try:
            step_target(value)
        except ValueError as exc:
            raise ValueError(f"step {step_id}: {exc}") from None
        entries[str(step_id)] = value
    text = json.dumps(entries, indent=2) + "\n"
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=".discovery-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class StaticDiscovery:
    """Discovery from a JSON file mapping step ids to addresses, reloaded when it changes.

    The file's (inode, size, mtime) is checked at most every STATIC_CHECK_INTERVAL seconds from
    inside ``active()``; no thread is needed. A missing or corrupt file keeps the last good
    mapping (empty at first) and logs one warning until the file is good again.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 check_interval: float = STATIC_CHECK_INTERVAL) -> None:
        self.path = os.fspath(path)
        self._check_interval = check_interval
        self._lock = threading.Lock()
        self._mapping: dict[int, str] = {}
        self._signature: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._warned = False
        self._closed = False

    def start(self) -> None:
        """Loads the file now (a missing file only warns: steps may appear later)."""
        with self._lock:
            self._refresh(time.monotonic(), force=True)

    def active(self) -> dict[int, str]:
        """The current mapping; re-reads the file if it changed since the last check."""
        now = time.monotonic()
        with self._lock:
            if not self._closed and now >= self._next_check:
                self._refresh(now)
            return dict(self._mapping)

    def close(self) -> None:
        """Stops re-reading the file; active() keeps answering with the last mapping."""
        with self._lock:
            self._closed = True

    def _refresh(self, now: float, *, force: bool = False) -> None:
        self._next_check = now + self._check_interval
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._warn(f"cannot read {self.path} ({exc.strerror}); keeping "
                       f"{len(self._mapping)} known step(s)")
            return
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self._signature and not force:
            return
        try:
            with open(self.path, encoding="utf-8") as fh:
                mapping = parse_static_mapping(fh.read(), where=self.path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            # Signature not recorded: a writer that is not atomic may still be mid-write.
            self._warn(f"{exc}; keeping {len(self._mapping)} known step(s)")
            return
        self._signature = signature
        if mapping != self._mapping:
            log.info("static discovery %s: active steps %s", self.path, sorted(mapping))
        self._mapping = mapping
        self._warned = False

    def _warn(self, message: str) -> None:
        if not self._warned:
            log.warning("static discovery: %s", message)
            self._warned = True


def make_discovery(spec: str, pipeline_id: str, *, namespace: str | None = None,
                   port: int = 50051) -> Discovery:
    """Builds the discovery backend named by `spec`: ``kubernetes`` or ``static:FILE``.

    Raises ValueError for an unknown spec, and for ``kubernetes`` when neither an in-cluster
    service account nor a kubeconfig is available.
    """
    if spec == "kubernetes":
        # Imported here: the kubernetes client is heavy and unused in local mode.
        from stepsvc.routing.kubernetes import ConfigMapDiscovery

        return ConfigMapDiscovery(pipeline_id, namespace=namespace, port=port)
    kind, sep, path = spec.partition(":")
    if kind == "static" and sep:
        if not path:
            raise ValueError("discovery 'static:FILE' needs a file path after 'static:'")
        return StaticDiscovery(path)
    raise ValueError(
        f"unknown discovery {spec!r}; use 'kubernetes' or 'static:FILE' "
        "(FILE is JSON like {\"1\": \"127.0.0.1:50052\"})")
