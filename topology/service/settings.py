"""Settings of the topology service: command-line flag, else environment variable, else default.

The Helm chart sets the environment variables; the names are part of the product:

=============================  =================================  ==============================
flag                           environment                        default
=============================  =================================  ==============================
``--host``                     ``STEPCHAIN_HOST``                 ``127.0.0.1``
``--port``                     ``STEPCHAIN_PORT``                 ``8080``
``--backend``                  ``STEPCHAIN_BACKEND``              ``local``
``--namespace``                ``STEPCHAIN_NAMESPACE``            the pod's, else ``default``
``--token-file``               ``STEPCHAIN_TOKEN_FILE``           ``<state-dir>/token``, generated
``--no-auth``                  (flag only)                        auth on
``--image-allowlist``          ``STEPCHAIN_IMAGE_ALLOWLIST``      ``ghcr.io/stepchain/*``
``--hostpath-allowlist``       ``STEPCHAIN_HOSTPATH_ALLOWLIST``   none
``--max-gpus``                 ``STEPCHAIN_MAX_GPUS``             ``8``
``--step-image``               ``STEPCHAIN_STEP_IMAGE``           ``ghcr.io/stepchain/step:0.1.0``
``--step-service-account``     ``STEPCHAIN_STEP_SERVICE_ACCOUNT`` ``stepchain-step``
``--drain-grace``              ``STEPCHAIN_DRAIN_GRACE``          ``20`` seconds
``--state-dir``                ``STEPCHAIN_STATE_DIR``            ``$XDG_STATE_HOME/stepchain``
``--jaeger-url``               ``STEPCHAIN_JAEGER_URL``           none (console links no traces)
=============================  =================================  ==============================

``OTEL_*`` variables of the service are passed through to every step it deploys.
``stepchain topology render`` reads the same flags and variables for what it renders and the
policy it checks (:func:`render_settings_from`), and ignores those about listening and state.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from topology.kube.objects import (
    DEFAULT_DRAIN_GRACE_S,
    DEFAULT_STEP_IMAGE,
    DEFAULT_STEP_SERVICE_ACCOUNT,
    RenderOptions,
)
from topology.service.allowlist import image_allowed
from topology.service.auth import default_state_dir, ensure_token, read_token

DEFAULT_IMAGE_ALLOWLIST = ("ghcr.io/stepchain/*",)
DEFAULT_MAX_GPUS = 8
#: Request bodies above this are refused with 413 before parsing.
MAX_BODY_BYTES = 1 << 20
BACKENDS = ("local", "kubernetes")
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: Settings only a running service uses (listening, auth, state): `render` ignores them.
SERVICE_ONLY_ENV = ("STEPCHAIN_HOST", "STEPCHAIN_PORT", "STEPCHAIN_BACKEND",
                    "STEPCHAIN_TOKEN_FILE", "STEPCHAIN_STATE_DIR")
#: Flags `topology render` shares with `topology serve`.
RENDER_FLAGS = ("namespace", "image_allowlist", "hostpath_allowlist", "max_gpus", "step_image",
                "step_service_account", "drain_grace")
#: A Kubernetes object name (DNS-1123 subdomain), e.g. a service account.
DNS1123_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class Settings:
    """Everything the topology service is configured with."""

    host: str = "127.0.0.1"
    port: int = 8080
    backend: str = "local"
    namespace: str = "default"
    #: Bearer token required on writes; None with `auth` = generated into the state dir at
    #: start (:func:`with_token`).
    token: str | None = None
    #: False only with --no-auth: writes need no token (refused unless bound to loopback).
    auth: bool = True
    image_allowlist: tuple[str, ...] = DEFAULT_IMAGE_ALLOWLIST
    hostpath_allowlist: tuple[str, ...] = ()
    max_gpus: int = DEFAULT_MAX_GPUS
    step_image: str = DEFAULT_STEP_IMAGE
    step_service_account: str = DEFAULT_STEP_SERVICE_ACCOUNT
    drain_grace_s: int = DEFAULT_DRAIN_GRACE_S
    state_dir: Path = field(default_factory=lambda: default_state_dir(os.environ))
    otel_env: Mapping[str, str] = field(default_factory=dict)
    max_body_bytes: int = MAX_BODY_BYTES
    #: Jaeger's UI (e.g. http://jaeger:16686): the console links trace ids to it.
    jaeger_url: str | None = None

    @property
    def loopback_only(self) -> bool:
        """Whether the service listens on a loopback address only."""
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; false for wildcards and real interfaces."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_list(text: str | None) -> tuple[str, ...]:
    """`"a, b,,c"` -> `("a", "b", "c")`."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def pod_namespace(default: str = "default") -> str:
    """The namespace of the pod this runs in (service-account mount), else `default`."""
    try:
        return NAMESPACE_FILE.read_text(encoding="utf-8").strip() or default
    except OSError:
        return default


def settings_from(flags: Mapping[str, object | None], environ: Mapping[str, str]) -> Settings:
    """Builds Settings from parsed flags (None = not given) and the environment.

    Raises ValueError naming the flag/variable when a value is unusable.
    """

    def pick(flag: str, env: str) -> str | None:
        value = flags.get(flag)
        if value is not None:
            return str(value)
        return environ.get(env) or None

    def number(flag: str, env: str, default: int, minimum: int) -> int:
        text = pick(flag, env)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"--{flag.replace('_', '-')} / {env}: {text!r} is not an integer") \
                from None
        if value < minimum:
            raise ValueError(f"--{flag.replace('_', '-')} / {env}: must be >= {minimum}, "
                             f"got {value}")
        return value

    backend = pick("backend", "STEPCHAIN_BACKEND") or "local"
    if backend not in BACKENDS:
        raise ValueError(f"--backend / STEPCHAIN_BACKEND: {backend!r} is not one of "
                         f"{', '.join(BACKENDS)}")
    token_file = pick("token_file", "STEPCHAIN_TOKEN_FILE")
    images = pick("image_allowlist", "STEPCHAIN_IMAGE_ALLOWLIST")
    hostpaths = split_list(pick("hostpath_allowlist", "STEPCHAIN_HOSTPATH_ALLOWLIST"))
    for prefix in hostpaths:
        if not prefix.startswith("/"):
            raise ValueError(f"--hostpath-allowlist / STEPCHAIN_HOSTPATH_ALLOWLIST: {prefix!r} "
                             "must be an absolute path prefix")
    state_dir = pick("state_dir", "STEPCHAIN_STATE_DIR")
    account = pick("step_service_account", "STEPCHAIN_STEP_SERVICE_ACCOUNT")
    if account is None:
        account = DEFAULT_STEP_SERVICE_ACCOUNT
    elif len(account) > 253 or not DNS1123_SUBDOMAIN_RE.match(account):
        raise ValueError(f"--step-service-account / STEPCHAIN_STEP_SERVICE_ACCOUNT: {account!r} "
                         "is not a service account name (DNS-1123 subdomain); give the account "
                         "with list/watch on configmaps, or `default` for the namespace's own")
    settings = Settings(
        host=pick("host", "STEPCHAIN_HOST") or "127.0.0.1",
        port=number("port", "STEPCHAIN_PORT", 8080, 0),
        backend=backend,
        namespace=pick("namespace", "STEPCHAIN_NAMESPACE") or pod_namespace(),
        token=read_token(token_file) if token_file else None,
        auth=not flags.get("no_auth"),
        image_allowlist=split_list(images) if images is not None else DEFAULT_IMAGE_ALLOWLIST,
        hostpath_allowlist=tuple(os.path.normpath(p) for p in hostpaths),
        max_gpus=number("max_gpus", "STEPCHAIN_MAX_GPUS", DEFAULT_MAX_GPUS, 0),
        step_image=pick("step_image", "STEPCHAIN_STEP_IMAGE") or DEFAULT_STEP_IMAGE,
        step_service_account=account,
        drain_grace_s=number("drain_grace", "STEPCHAIN_DRAIN_GRACE", DEFAULT_DRAIN_GRACE_S, 0),
        # Resolved once, here: steps are started in their pipeline's folder, where a relative
        # path would name another place (every POST answered 502, "cannot read config file").
        state_dir=(Path(state_dir) if state_dir else default_state_dir(environ))
        .expanduser().resolve(),
        otel_env={k: v for k, v in environ.items() if k.startswith("OTEL_")},
        jaeger_url=_http_url(pick("jaeger_url", "STEPCHAIN_JAEGER_URL")),
    )
    check_startup(settings)
    return settings


def _http_url(text: str | None) -> str | None:
    if text is None:
        return None
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"--jaeger-url / STEPCHAIN_JAEGER_URL: {text!r} must start with "
                         "http:// or https:// (Jaeger's UI, e.g. http://localhost:16686)")
    return text.rstrip("/")


def render_settings_from(flags: Mapping[str, object | None],
                         environ: Mapping[str, str]) -> Settings:
    """Settings for `topology render`: the service's policy and render settings from the same
    flags and variables, ignoring those about listening, auth and state (it serves nothing)."""
    return settings_from({k: v for k, v in flags.items() if k in RENDER_FLAGS},
                         {k: v for k, v in environ.items() if k not in SERVICE_ONLY_ENV})


def with_token(settings: Settings) -> Settings:
    """`settings` with the token writes need: the given one, else the state dir's (generated at
    first start, mode 0600); unchanged with --no-auth."""
    if not settings.auth or settings.token is not None:
        return settings
    return replace(settings, token=ensure_token(settings.state_dir))


def render_options(settings: Settings) -> RenderOptions:
    """What the manifests depend on besides the pipeline, from the service settings."""
    return RenderOptions(namespace=settings.namespace, image=settings.step_image,
                         otel_env=dict(settings.otel_env), drain_grace_s=settings.drain_grace_s,
                         service_account=settings.step_service_account)


def check_startup(settings: Settings) -> None:
    """Refuses settings the service must not start with (ValueError saying how to fix them)."""
    if not settings.loopback_only and not settings.auth:
        raise ValueError(
            f"refusing to listen on {settings.host} with --no-auth: anyone who can reach it "
            "could create pipelines. Drop --no-auth (a token is generated into the state dir, "
            "or give --token-file / STEPCHAIN_TOKEN_FILE), or bind to 127.0.0.1")
    if not image_allowed(settings.step_image, settings.image_allowlist):
        raise ValueError(
            f"the default step image {settings.step_image!r} does not match the image "
            f"allow-list {', '.join(settings.image_allowlist) or '(empty)'}; fix "
            "--step-image or --image-allowlist")
