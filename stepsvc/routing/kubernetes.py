"""Kubernetes discovery: a step is active while its ConfigMap exists.

The topology service writes one ConfigMap per step, labelled ``pipeline_id=<id>`` and
``step_id=<N>``. :class:`ConfigMapDiscovery` lists them once, then WATCHes from the list's
resourceVersion in a daemon thread and keeps ``step_id -> address`` in memory, so a request
never waits on the API server. When the watch breaks or expires (410 Gone) it lists again and
resumes watching, with backoff while the API server keeps failing — a resync on error, not a
poll. The address of step N is its headless Service as a gRPC ``dns:///`` target,
``dns:///<pipeline_id>-step-<N>.<namespace>.svc.cluster.local:<port>``: DNS answers one record
per ready pod and the forwarding channel's ``round_robin`` policy spreads requests over them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from stepsvc.step.config import parse_config

log = logging.getLogger(__name__)

#: Where a pod finds its own namespace.
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: Label every step ConfigMap carries with its pipeline and step id.
PIPELINE_LABEL = "pipeline_id"
STEP_LABEL = "step_id"
#: Key of the step config inside its ConfigMap (fallback source of the step id).
CONFIG_KEY = "PIPELINE_CONFIG"
#: Server-side watch timeout; a real API server ends the stream then and we resume from the
#: last resourceVersion without listing again.
WATCH_TIMEOUT_S = 300
#: Connect / read timeouts of list calls, and of reads on the watch stream (server timeout + slack).
REQUEST_TIMEOUT_S = 10.0
#: Backoff between failed resyncs: doubles while failures repeat, back to the start once a
#: watch has stayed open for HEALTHY_WATCH_S (so a broken RBAC rule cannot turn into a poll).
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 10.0
#: TCP keepalive on every connection to the API server (idle seconds, probe interval, probes):
#: a watch cut off by a partition (no reset, nothing to send) is dropped and resynced after
#: ~11 s instead of waiting out TCP's retransmission back-off (up to 2 minutes) once it heals.
API_KEEPALIVE = (5, 2, 3)
HEALTHY_WATCH_S = 5.0
#: How long start() waits for the first list before letting the server start anyway.
INITIAL_SYNC_TIMEOUT_S = 5.0


#: DNS suffix of the cluster's Services; override with STEPCHAIN_CLUSTER_DOMAIN where the
#: cluster was set up with another one (kubelet --cluster-domain).
DEFAULT_CLUSTER_DOMAIN = "cluster.local"


def cluster_domain() -> str:
    """The cluster's DNS domain: STEPCHAIN_CLUSTER_DOMAIN, else ``cluster.local``."""
    return os.environ.get("STEPCHAIN_CLUSTER_DOMAIN", "").strip(". ") or DEFAULT_CLUSTER_DOMAIN


def step_service_address(pipeline_id: str, step_id: int, namespace: str, port: int,
                         domain: str | None = None) -> str:
    """gRPC target of step `step_id`'s headless Service, every replica behind one name:
    ``dns:///<pid>-step-<N>.<ns>.svc.<domain>:<port>`` (fully qualified, so no resolver
    search list is involved)."""
    return f"dns:///{pipeline_id}-step-{step_id}.{namespace}.svc.{domain or cluster_domain()}:{port}"


def current_namespace(default: str = "default") -> str:
    """The pod's namespace from the service-account mount, else `default`."""
    try:
        namespace = NAMESPACE_FILE.read_text(encoding="utf-8").strip()
    except OSError:
        return default
    return namespace or default


def load_api_client(user: str = "kubernetes discovery") -> client.ApiClient:
    """An ApiClient from the in-cluster service account, else from the local kubeconfig.

    The one place stepchain finds its Kubernetes credentials (discovery, the topology service's
    kubernetes backend, the load test's target lookup). Raises ValueError saying that `user`
    (what needs the cluster) tried both, and why each failed, when neither is available.
    """
    # A configuration of our own: the client's process-wide default stays untouched.
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as in_cluster_error:
        try:
            # KUBECONFIG read now, not at import time as the client's default does.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                    client_configuration=configuration)
        except (config.ConfigException, OSError) as kubeconfig_error:
            raise ValueError(
                f"{user} needs either an in-cluster service account "
                f"({in_cluster_error}) or a kubeconfig ({kubeconfig_error})") from None
    configuration.socket_options = keepalive_socket_options()
    return client.ApiClient(configuration)


def keepalive_socket_options() -> list[tuple[int, int, int]]:
    """urllib3's own socket options (no Nagle) plus TCP keepalive at API_KEEPALIVE (urllib3
    replaces its defaults with what it is given)."""
    import socket

    import urllib3

    idle, interval, count = API_KEEPALIVE
    options = list(urllib3.connection.HTTPConnection.default_socket_options)
    options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval),
                        ("TCP_KEEPCNT", count)):
        if hasattr(socket, name):  # Linux names all three
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


class ConfigMapDiscovery:
    """Active steps of one pipeline from its ConfigMaps (list + watch, cached)."""

    def __init__(self, pipeline_id: str, namespace: str | None = None, port: int = 50051,
                 api_client: client.ApiClient | None = None) -> None:
        self.pipeline_id = pipeline_id
        self.namespace = namespace or current_namespace()
        self.port = port
        self._api = client.CoreV1Api(api_client or load_api_client())
        self._lock = threading.Lock()
        # ConfigMap name -> step id: two ConfigMaps may name one step, and a DELETED event only
        # carries the object that went away.
        self._by_name: dict[str, int] = {}
        self._snapshot: dict[int, str] = {}
        self._stop = threading.Event()
        # Set once the first list is cached and its watch is open: from then on nothing is missed.
        self._synced = threading.Event()
        self._watch_opened_at: float | None = None
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        #: Number of successful lists so far (the first plus every resync); for observability.
        self.list_count = 0

    def start(self, initial_sync_timeout: float = INITIAL_SYNC_TIMEOUT_S) -> None:
        """Starts the watching thread; calling it again does nothing.

        Waits up to `initial_sync_timeout` seconds for the first list and for its watch to be
        open, so a server that starts serving right after neither answers UNAVAILABLE for steps
        that exist nor misses a change made just after start() returns. If the API server does
        not answer in time, discovery keeps trying in the background.
        """
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(
                target=self._run, name=f"configmap-discovery-{self.pipeline_id}", daemon=True)
            self._thread.start()
        if not self._synced.wait(initial_sync_timeout):
            log.warning("configmap discovery %s: no answer from the API server within %.0fs; "
                        "no step is active until it answers", self.pipeline_id,
                        initial_sync_timeout)

    def active(self) -> dict[int, str]:
        """step_id -> Service address of every step whose ConfigMap exists (cached)."""
        with self._lock:
            return dict(self._snapshot)

    def close(self) -> None:
        """Stops the watch promptly (the stream's socket is shut down) and joins the thread."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while thread.is_alive() and time.monotonic() < deadline:
            # Repeated: a watch that was just being opened only has a socket to shut down once
            # its request went out (Watch.stream resets an earlier stop()).
            with self._lock:
                current = self._watch
            if current is not None:
                current.stop()
            thread.join(timeout=0.05)

    # --- the watching thread -------------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_INITIAL_S
        while not self._stop.is_set():
            try:
                resource_version = self._list()
                self._watch_from(resource_version)
            except Exception as exc:  # any failure means the cache may be stale: resync
                if self._stop.is_set():
                    break
                if self._watch_opened_at is not None \
                        and time.monotonic() - self._watch_opened_at >= HEALTHY_WATCH_S:
                    # The watch had been working: a fresh problem, not the same one repeating.
                    backoff = BACKOFF_INITIAL_S
                if isinstance(exc, ApiException) and exc.status == 410:
                    log.info("configmap discovery %s: watch expired; listing again",
                             self.pipeline_id)
                else:
                    log.warning("configmap discovery %s in %s: %s; resyncing in %.1fs",
                                self.pipeline_id, self.namespace, _describe(exc), backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _list(self) -> str | None:
        result = self._api.list_namespaced_config_map(
            self.namespace, label_selector=f"{PIPELINE_LABEL}={self.pipeline_id}",
            _request_timeout=REQUEST_TIMEOUT_S)
        by_name: dict[str, int] = {}
        for item in result.items or []:
            step_id = self._step_id_of(item)
            if step_id is not None and item.metadata is not None and item.metadata.name:
                by_name[item.metadata.name] = step_id
        with self._lock:
            self._by_name = by_name
            self._publish()
        self.list_count += 1
        return result.metadata.resource_version if result.metadata else None

    def _watch_from(self, resource_version: str | None) -> None:
        # The return type is given because Watch cannot infer it through the wrapper below.
        w = watch.Watch(return_type="V1ConfigMap")

        def open_stream(*args: Any, **kw: Any) -> Any:
            response = self._api.list_namespaced_config_map(*args, **kw)
            self._watch_opened_at = time.monotonic()
            self._synced.set()  # the server answered the watch request: changes flow from here
            return response
        with self._lock:
            if self._stop.is_set():
                return
            self._watch = w
        kwargs: dict[str, Any] = {
            "label_selector": f"{PIPELINE_LABEL}={self.pipeline_id}",
            "timeout_seconds": WATCH_TIMEOUT_S,
            "_request_timeout": (REQUEST_TIMEOUT_S, WATCH_TIMEOUT_S + 30),
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        try:
            while not self._stop.is_set():
                opened = time.monotonic()
                for event in w.stream(open_stream, self.namespace,
                                      **kwargs):
                    self._apply(event["type"], event["object"])
                if self._stop.is_set():
                    return
                if time.monotonic() - opened < 1.0:
                    # A server that closes watches at once would make us spin: treat it as an
                    # error, which lists again after a backoff.
                    raise RuntimeError("the watch stream ended as soon as it was opened")
                # The server ended the stream normally (its timeout): resume where we were.
                if w.resource_version:
                    kwargs["resource_version"] = w.resource_version
        finally:
            with self._lock:
                self._watch = None

    def _apply(self, event_type: str, obj: Any) -> None:
        name = getattr(getattr(obj, "metadata", None), "name", None)
        if not name:
            return  # BOOKMARK events carry no object worth caching
        with self._lock:
            if event_type in ("ADDED", "MODIFIED"):
                step_id = self._step_id_of(obj)
                if step_id is None:
                    self._by_name.pop(name, None)  # relabelled away from this pipeline
                else:
                    self._by_name[name] = step_id
            elif event_type == "DELETED":
                self._by_name.pop(name, None)
            else:
                return
            self._publish()

    def _publish(self) -> None:
        # Caller holds the lock. A new dict each time: active() copies it under the lock.
        steps = sorted(set(self._by_name.values()))
        snapshot = {s: step_service_address(self.pipeline_id, s, self.namespace, self.port)
                    for s in steps}
        if snapshot.keys() != self._snapshot.keys():
            log.info("configmap discovery %s: active steps %s", self.pipeline_id, steps)
        self._snapshot = snapshot

    def _step_id_of(self, cm: Any) -> int | None:
        """The step id a ConfigMap announces, or None if it is not one of this pipeline's."""
        meta = cm.metadata
        if meta is None or not meta.name:
            return None
        if meta.deletion_timestamp is not None:
            return None  # being deleted (finalizers pending): the step is on its way out
        labels = meta.labels or {}
        # The API server filters by label, but do not rely on it (and kmock does not).
        if labels.get(PIPELINE_LABEL) != self.pipeline_id:
            return None
        if meta.namespace and meta.namespace != self.namespace:
            return None
        raw = labels.get(STEP_LABEL)
        if raw is not None:
            if raw.isdigit():
                return int(raw)
            log.warning("configmap %s: label %s=%r is not a step id; ignored",
                        meta.name, STEP_LABEL, raw)
            return None
        text = (cm.data or {}).get(CONFIG_KEY)
        if not text:
            log.warning("configmap %s has neither a %s label nor a %s key; ignored",
                        meta.name, STEP_LABEL, CONFIG_KEY)
            return None
        try:
            cfg = parse_config(text)
        except ValueError as exc:
            log.warning("configmap %s: %s; ignored", meta.name, exc)
            return None
        if cfg.pipeline_id != self.pipeline_id:
            log.warning("configmap %s: its %s is for pipeline %r, not %r; ignored",
                        meta.name, CONFIG_KEY, cfg.pipeline_id, self.pipeline_id)
            return None
        return cfg.step_id


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"API error {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
