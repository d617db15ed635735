"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK's controller with fake nodes whose pods turn Running and Ready.

The binaries are built from their Go modules by ``make tools`` (tests/tools/build.sh) into
``$STEPCHAIN_TOOLS_DIR`` (default ``.cache/tools``). The flags follow controller-runtime's
envtest (RBAC on, service-account keys and certificates generated at start, etcd without fsync)
plus what envtest leaves out: Node authorization, the controllers a Deployment needs, a
scheduler and KWOK.

Two users:

- ``make cluster-up`` / ``make cluster-down`` run this file as a script (``up``/``down``/``status``)
  with ``out/cluster`` as its folder: the processes outlive the command, their pids are recorded
  in ``out/cluster/state.json``, and ``down`` stops exactly those and removes the folder.
- the ``kube_cluster`` pytest fixture (tests/cluster_fixtures.py): one control plane per test
  session in a temporary folder, on free ports, stopped at the end of the session.

Pods never run containers and their IPs are fake (KWOK): a test asserts API state and never
connects to a pod or cluster IP. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
#: Fake address ranges, never routed: Service cluster IPs and KWOK's pod IPs.
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/24"
#: KWOK manages the nodes carrying this annotation (and only those).
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
#: The controllers the tests rely on: Deployments -> ReplicaSets -> Pods, Jobs, the garbage
#: collector (ownerReferences), namespaces going away, service accounts and their tokens.
CONTROLLERS = (
    "deployment-controller", "replicaset-controller", "job-controller",
    "garbage-collector-controller", "namespace-controller", "serviceaccount-controller",
    "serviceaccount-token-controller", "root-ca-certificate-publisher-controller",
    "endpointslice-controller", "clusterrole-aggregation-controller",
    # Lifts the not-ready taint admission puts on a new node once KWOK reports it Ready.
    "node-lifecycle-controller",
)
#: Order of start; stopped in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
START_TIMEOUT_S = float(os.environ.get("STEPCHAIN_CLUSTER_START_TIMEOUT", "180"))


def tools_dir() -> Path:
    """Where ``make tools`` put the binaries: ``$STEPCHAIN_TOOLS_DIR`` or ``.cache/tools``."""
    configured = os.environ.get("STEPCHAIN_TOOLS_DIR")
    return Path(configured) if configured else ROOT / ".cache" / "tools"


def tool(name: str) -> Path:
    """Path of a built tool; raises FileNotFoundError naming the command that builds it."""
    path = tools_dir() / "bin" / name
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"{path} is missing: build the real Kubernetes components with `make tools` "
            "(bash tests/tools/build.sh; set STEPCHAIN_TOOLS_DIR to use a shared cache)")
    return path


class ControlPlaneError(RuntimeError):
    """A component did not start; the message names it and ends with its log's last lines."""


# --------------------------------------------------------------------------------------------
# Certificates and keys (generated at every start, as envtest does)


@dataclass(frozen=True)
class _Pem:
    cert: bytes
    key: bytes


def _ec_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _certificate(subject_cn: str, *, org: str | None = None, issuer: Any = None,
                 issuer_key: Any = None, ca: bool = False, server: bool = False,
                 dns: Sequence[str] = (), ips: Sequence[str] = ()) -> tuple[Any, Any]:
    """(certificate, key): a CA when `ca`, else signed by `issuer`/`issuer_key`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _ec_key()
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    name = x509.Name(attrs)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer.subject if issuer is not None else name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=7))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False)
    if dns or ips:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())
    return cert, key


def _pem(cert: Any, key: Any) -> _Pem:
    from cryptography.hazmat.primitives import serialization

    return _Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass(frozen=True)
class Credentials:
    """Every certificate and key one control plane uses, written under ``pki/``."""

    ca: _Pem
    serving: _Pem
    clients: dict[str, _Pem]
    service_account_key: bytes
    service_account_pub: bytes

    @classmethod
    def generate(cls) -> Credentials:
        from cryptography.hazmat.primitives import serialization

        ca_cert, ca_key = _certificate("stepchain-test-ca", ca=True)
        serving = _certificate(
            "kube-apiserver", issuer=ca_cert, issuer_key=ca_key, server=True,
            dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local"),
            ips=(LOOPBACK, str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))))
        clients = {
            # The admin of the kubeconfig a user or a test gets.
            "admin": _certificate("stepchain-admin", org="system:masters",
                                  issuer=ca_cert, issuer_key=ca_key),
            "kube-controller-manager": _certificate("system:kube-controller-manager",
                                                    issuer=ca_cert, issuer_key=ca_key),
            "kube-scheduler": _certificate("system:kube-scheduler",
                                           issuer=ca_cert, issuer_key=ca_key),
            # KWOK plays every kubelet of its fake nodes: it writes node and pod status.
            "kwok": _certificate("kwok-controller", org="system:masters",
                                 issuer=ca_cert, issuer_key=ca_key),
        }
        sa_key = _ec_key()
        return cls(
            ca=_pem(ca_cert, ca_key), serving=_pem(*serving),
            clients={name: _pem(*pair) for name, pair in clients.items()},
            service_account_key=_key_pem(sa_key),
            service_account_pub=sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def write(self, pki: Path) -> None:
        pki.mkdir(parents=True, exist_ok=True)
        files = {"ca.crt": self.ca.cert, "ca.key": self.ca.key,
                 "apiserver.crt": self.serving.cert, "apiserver.key": self.serving.key,
                 "sa.key": self.service_account_key, "sa.pub": self.service_account_pub}
        for name, pem in self.clients.items():
            files[f"{name}.crt"] = pem.cert
            files[f"{name}.key"] = pem.key
        for name, data in files.items():
            path = pki / name
            path.write_bytes(data)
            path.chmod(0o600)


def kubeconfig_document(server: str, ca_pem: bytes, *, user: str,
                        client: _Pem | None = None, token: str | None = None,
                        namespace: str | None = None) -> dict[str, Any]:
    """A kubeconfig (as a dict) for one user of `server`, certificates embedded."""
    import base64

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    credentials: dict[str, str] = {}
    if client is not None:
        credentials = {"client-certificate-data": b64(client.cert),
                       "client-key-data": b64(client.key)}
    if token is not None:
        credentials = {"token": token}
    context: dict[str, str] = {"cluster": "stepchain-local", "user": user}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": f"{user}@stepchain-local",
        "clusters": [{"name": "stepchain-local",
                      "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": f"{user}@stepchain-local", "context": context}],
        "preferences": {},
    }


# --------------------------------------------------------------------------------------------
# Processes


def free_loopback_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), to tell a recorded process
    from a later one that reused its pid; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, started: str | None) -> bool:
    now = process_start_time(pid)
    return now is not None and (started is None or now == started)


def die_with_parent() -> None:
    """preexec_fn of a process a test session starts: the kernel SIGKILLs it when the session's
    process dies, however it dies (a SIGKILLed pytest, a CI timeout), so no etcd or API server
    outlives the tests. Not for ``make cluster-up``'s processes, which outlive the command."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


@dataclass
class ControlPlane:
    """One control plane whose files (pki, kubeconfigs, etcd data, logs) live in `workdir`.

    ``start()`` starts every component and waits until a Deployment could get Ready pods
    (nodes Ready, the default service account there); ``stop()`` stops what it started.
    With ``detach=True`` the processes get their own session and outlive this Python process
    (``make cluster-up``); a later ``ControlPlane.load(workdir).stop()`` stops them.
    """

    workdir: Path
    nodes: int = 1
    detach: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    started: dict[str, str | None] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    # ---- layout

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (system:masters)."""
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.ports['apiserver']}"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    # ---- lifecycle

    def start(self) -> None:
        binaries = {name: tool(name) for name in COMPONENTS}
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        etcd_client, etcd_peer, apiserver = free_loopback_ports(3)
        self.ports = {"etcd": etcd_client, "etcd-peer": etcd_peer, "apiserver": apiserver}
        creds = Credentials.generate()
        creds.write(self.pki)
        self._write_kubeconfigs(creds)
        stages = tools_dir() / "share" / "kwok" / "stages.yaml"
        if not stages.is_file():
            raise FileNotFoundError(f"{stages} is missing: run `make tools` (it copies KWOK's "
                                    "default node and pod stages next to the kwok binary)")
        try:
            self._spawn("etcd", binaries["etcd"], self._etcd_args())
            self._wait_http(f"http://{LOOPBACK}:{etcd_client}/health", "etcd", client=None)
            self._spawn("kube-apiserver", binaries["kube-apiserver"], self._apiserver_args())
            self._wait_http(f"{self.server}/readyz", "kube-apiserver", client="admin")
            self._spawn("kube-controller-manager", binaries["kube-controller-manager"],
                        self._controller_manager_args())
            self._spawn("kube-scheduler", binaries["kube-scheduler"], self._scheduler_args())
            self._spawn("kwok", binaries["kwok"], self._kwok_args(stages))
            self._save()
            self._create_nodes()
            self._wait_ready()
        except BaseException:
            self.stop(remove=False)
            raise
        self._save()

    def stop(self, *, remove: bool = True, timeout_s: float = 15.0) -> None:
        """Stops the recorded processes (SIGTERM, then SIGKILL after `timeout_s`), newest first;
        with `remove`, deletes `workdir`. Never signals a pid that now belongs to another
        process (start times are compared)."""
        for name in reversed(COMPONENTS):
            pid = self.pids.get(name)
            if pid is None:
                continue
            proc = self._procs.get(name)
            if proc is not None:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout_s)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
            elif process_alive(pid, self.started.get(name)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout_s
                while process_alive(pid, self.started.get(name)) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if process_alive(pid, self.started.get(name)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            del self.pids[name]
        self._procs.clear()
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif self.workdir.is_dir():
            self._save()

    def restart_apiserver(self, down_s: float = 0.0) -> None:
        """Kills kube-apiserver (SIGKILL: a crash, its connections reset; a graceful stop
        drains watches for tens of seconds), waits `down_s`, and starts it again on the same
        port with the same keys (etcd keeps every object)."""
        name = "kube-apiserver"
        pid = self.pids.pop(name)
        proc = self._procs.pop(name, None)
        if proc is not None:
            proc.kill()
            proc.wait(30)
        elif process_alive(pid, self.started.get(name)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while process_alive(pid, self.started.get(name)) and time.monotonic() < deadline:
                time.sleep(0.1)
        time.sleep(down_s)
        self._spawn(name, tool(name), self._apiserver_args())
        self._wait_http(f"{self.server}/readyz", name, client="admin")
        if self.workdir.is_dir():
            self._save()

    def running(self) -> dict[str, bool]:
        """Whether each recorded component still runs."""
        return {name: process_alive(pid, self.started.get(name)) for name, pid in self.pids.items()}

    @classmethod
    def load(cls, workdir: Path) -> ControlPlane:
        """The control plane recorded in `workdir`/state.json by a detached start."""
        state = json.loads((workdir / "state.json").read_text())
        return cls(workdir=workdir, nodes=state["nodes"], detach=True, ports=state["ports"],
                   pids=state["pids"], started=state["started"])

    def _save(self) -> None:
        self.state_file.write_text(json.dumps({
            "nodes": self.nodes, "ports": self.ports, "pids": self.pids,
            "started": self.started, "server": self.server,
            "kubeconfig": str(self.kubeconfig)}, indent=2) + "\n")

    # ---- components

    def _spawn(self, name: str, binary: Path, args: list[str]) -> None:
        log: IO[bytes] = open(self.log(name), "ab")  # noqa: SIM115 (the child keeps it)
        with log:
            proc = subprocess.Popen([str(binary), *args], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                    start_new_session=self.detach,
                                    preexec_fn=None if self.detach else die_with_parent)
        self._procs[name] = proc
        self.pids[name] = proc.pid
        self.started[name] = process_start_time(proc.pid)

    def _etcd_args(self) -> list[str]:
        client = f"http://{LOOPBACK}:{self.ports['etcd']}"
        peer = f"http://{LOOPBACK}:{self.ports['etcd-peer']}"
        return [
            "--name=stepchain", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=stepchain={peer}", "--initial-cluster-state=new",
            # A test cluster: no fsync (envtest does the same), small logs.
            "--unsafe-no-fsync=true", "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        pki = self.pki
        return [
            f"--etcd-servers=http://{LOOPBACK}:{self.ports['etcd']}",
            f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}",
            f"--secure-port={self.ports['apiserver']}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The `kubernetes` Service's endpoints would name the advertise address, and the
            # lease reconciler refuses a loopback one; nothing here connects to that Service.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            # Who called what: tests check a service account used only what its Role grants.
            f"--audit-policy-file={self._audit_policy()}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=200",
            "--profiling=false",
            "--v=1",
        ]

    def _audit_policy(self) -> Path:
        path = self.workdir / "audit-policy.yaml"
        path.write_text(json.dumps({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
            "omitStages": ["RequestReceived"],
            # Metadata of every request except the components' own chatter (leases, events).
            "rules": [
                {"level": "None", "users": ["system:kube-scheduler", "kwok-controller",
                                            "system:apiserver"]},
                {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
                {"level": "None", "resources": [{"group": "coordination.k8s.io"},
                                                {"group": "", "resources": ["events"]}]},
                {"level": "Metadata"},
            ],
        }))
        return path

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def audit_events(self, user: str | None = None) -> list[dict[str, Any]]:
        """The API server's audit events so far (ResponseComplete stage), of `user` if given."""
        events = []
        try:
            lines = self.audit_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written
            if event.get("stage") != "ResponseComplete":
                continue
            if user is None or event.get("user", {}).get("username") == user:
                events.append(event)
        return events

    def _controller_manager_args(self) -> list[str]:
        return [
            f"--kubeconfig={self.workdir / 'kube-controller-manager.kubeconfig'}",
            "--leader-elect=false",
            f"--controllers={','.join(CONTROLLERS)}",
            # Each controller acts with its own service account and bootstrap role, as kubeadm
            # runs it; the token controller signs with the API server's key.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            # No HTTPS endpoint of its own: nothing to collide with other sessions' clusters.
            "--secure-port=0",
            "--profiling=false",
            "--v=1",
        ]

    def _scheduler_args(self) -> list[str]:
        return [
            f"--kubeconfig={self.workdir / 'kube-scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--secure-port=0",
            "--profiling=false",
            "--v=1",
        ]

    def _kwok_args(self, stages: Path) -> list[str]:
        key, value = KWOK_NODE_ANNOTATION
        return [
            f"--kubeconfig={self.workdir / 'kwok.kubeconfig'}",
            f"--config={stages}",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            f"--cidr={POD_CIDR}",
            "--node-lease-duration-seconds=40",
        ]

    def _write_kubeconfigs(self, creds: Credentials) -> None:
        users = {"kubeconfig": "admin",
                 "kube-controller-manager.kubeconfig": "kube-controller-manager",
                 "kube-scheduler.kubeconfig": "kube-scheduler",
                 "kwok.kubeconfig": "kwok"}
        for filename, user in users.items():
            doc = kubeconfig_document(self.server, creds.ca.cert, user=user,
                                      client=creds.clients[user])
            path = self.workdir / filename
            path.write_text(json.dumps(doc, indent=2) + "\n")
            path.chmod(0o600)

    # ---- readiness

    def _ssl_context(self, client: str) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / f"{client}.crt"), str(self.pki / f"{client}.key"))
        return context

    def _check_alive(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is not None:
            raise ControlPlaneError(
                f"{name} exited with status {proc.returncode} while starting; "
                f"last lines of {self.log(name)}:\n{log_tail(self.log(name))}")

    def _wait_http(self, url: str, name: str, *, client: str | None) -> None:
        context = self._ssl_context(client) if client else None
        deadline = time.monotonic() + START_TIMEOUT_S
        last = "no answer yet"
        while time.monotonic() < deadline:
            self._check_alive(name)
            try:
                with urllib.request.urlopen(url, timeout=5, context=context) as reply:
                    if reply.status == 200:
                        return
                    last = f"HTTP {reply.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}: {exc.read()[-300:].decode(errors='replace')}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            time.sleep(0.25)
        raise ControlPlaneError(f"{name} not ready at {url} after {START_TIMEOUT_S:.0f} s "
                                f"({last}); last lines of {self.log(name)}:\n"
                                f"{log_tail(self.log(name))}")

    def api(self) -> Any:
        """An official-client ApiClient with the admin credentials."""
        from kubernetes import config

        return config.new_client_from_config(str(self.kubeconfig))

    def _create_nodes(self) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        core = client.CoreV1Api(self.api())
        key, value = KWOK_NODE_ANNOTATION
        capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "4",
                    "ephemeral-storage": "100Gi"}
        for index in range(self.nodes):
            name = f"kwok-node-{index}"
            node = {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": {key: value},
                             "labels": {"kubernetes.io/hostname": name,
                                        "kubernetes.io/os": "linux",
                                        "kubernetes.io/arch": "amd64", "type": "kwok"}},
                "status": {"capacity": capacity, "allocatable": capacity},
            }
            try:
                core.create_node(node)
            except ApiException as exc:
                if exc.status != 409:
                    raise

    def _wait_ready(self) -> None:
        """Until every fake node is Ready and namespace `default` has its service account (a
        Deployment created before that gets no pods for a while)."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        core = client.CoreV1Api(self.api())
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = "nodes"
        while time.monotonic() < deadline:
            for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
                self._check_alive(name)
            nodes = core.list_node().items
            ready = [n for n in nodes if any(c.type == "Ready" and c.status == "True"
                                             for c in (n.status.conditions or []))]
            if len(ready) >= self.nodes:
                waiting = "the default service account"
                try:
                    core.read_namespaced_service_account("default", "default")
                    return
                except ApiException as exc:
                    if exc.status != 404:
                        raise
            time.sleep(0.5)
        logs = "\n".join(f"--- {n}:\n{log_tail(self.log(n), 10)}"
                         for n in ("kube-controller-manager", "kwok"))
        raise ControlPlaneError(f"control plane up but still waiting for {waiting} after "
                                f"{START_TIMEOUT_S:.0f} s\n{logs}")


@contextlib.contextmanager
def control_plane(workdir: Path, nodes: int = 1) -> Iterator[ControlPlane]:
    """A started control plane, stopped (and its folder removed) on exit."""
    plane = ControlPlane(workdir=workdir, nodes=nodes)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


# --------------------------------------------------------------------------------------------
# make cluster-up / cluster-down


DEFAULT_DIR = ROOT / "out" / "cluster"


def _up(args: argparse.Namespace) -> int:
    workdir: Path = args.dir
    if (workdir / "state.json").is_file():
        plane = ControlPlane.load(workdir)
        if plane.running() and all(plane.running().values()):
            print(f"cluster already running ({plane.server}); `make cluster-down` stops it",
                  file=sys.stderr)
            print(f"export KUBECONFIG={plane.kubeconfig}")
            return 0
        plane.stop()  # leftovers of a dead cluster
    began = time.monotonic()
    plane = ControlPlane(workdir=workdir, nodes=args.nodes, detach=True)
    print(f"starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK "
          f"({args.nodes} fake node(s)) on {LOOPBACK}; logs in {plane.logs}", file=sys.stderr)
    try:
        plane.start()
    except (ControlPlaneError, FileNotFoundError) as exc:
        print(f"cluster-up failed: {exc}", file=sys.stderr)
        return 1
    print(f"cluster up in {time.monotonic() - began:.0f} s: API server {plane.server}, "
          f"admin kubeconfig {plane.kubeconfig}; `make cluster-down` stops it", file=sys.stderr)
    print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0


def _down(args: argparse.Namespace) -> int:
    workdir: Path = args.dir
    if not (workdir / "state.json").is_file():
        print(f"no cluster recorded in {workdir}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    plane = ControlPlane.load(workdir)
    stopping = sorted(n for n, alive in plane.running().items() if alive)
    plane.stop()
    print(f"cluster stopped ({', '.join(stopping) or 'nothing was running'}); "
          f"removed {workdir}", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    workdir: Path = args.dir
    if not (workdir / "state.json").is_file():
        print(f"no cluster recorded in {workdir}")
        return 1
    plane = ControlPlane.load(workdir)
    for name, alive in plane.running().items():
        print(f"{name:<24} pid {plane.pids[name]:<8} {'running' if alive else 'NOT running'}")
    print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0 if all(plane.running().values()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="control_plane.py", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="folder of the cluster's files (default: out/cluster)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the control plane in the background")
    up.add_argument("--nodes", type=int, default=1, help="fake KWOK nodes (default 1)")
    up.set_defaults(func=_up)
    sub.add_parser("down", help="stop what `up` started and remove its folder"
                   ).set_defaults(func=_down)
    sub.add_parser("status", help="which recorded components run").set_defaults(func=_status)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
