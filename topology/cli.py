"""`stepchain topology serve|render`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from topology.pipeline.model import PipelineInvalid

from stepsvc import cli_args

SERVE_FLAGS = ("host", "port", "backend", "namespace", "token_file", "image_allowlist",
               "hostpath_allowlist", "max_gpus", "step_image", "step_service_account",
               "drain_grace", "state_dir", "no_auth", "jaeger_url")


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `topology serve` and `topology render`."""
    topology = sub.add_parser("topology", help="pipeline JSON -> step servers (API, render)")
    commands = topology.add_subparsers(dest="topology_command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve", help="run the topology HTTP API",
        description="Runs the topology API. Every flag falls back to its STEPCHAIN_* "
                    "environment variable (e.g. --max-gpus / STEPCHAIN_MAX_GPUS).")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=cli_args.port, help="HTTP port, 0..65535 (default 8080)")
    serve.add_argument("--backend", choices=("local", "kubernetes"),
                       help="where pipelines run (default local)")
    serve.add_argument("--namespace", help="Kubernetes namespace (default: the pod's, else "
                                           "default)")
    serve.add_argument("--token-file", help="file holding the bearer token writes need "
                                            "(default: STATE_DIR/token, generated at first "
                                            "start with mode 0600)")
    serve.add_argument("--no-auth", action="store_true", default=None,
                       help="writes need no token (loopback only; logs a warning): any local "
                            "process may then start step processes")
    serve.add_argument("--image-allowlist", help="comma-separated globs step images must match "
                                                 "(default ghcr.io/stepchain/*)")
    serve.add_argument("--hostpath-allowlist", help="comma-separated path prefixes allowed as "
                                                    "hostPath volumes (default: none)")
    serve.add_argument("--max-gpus", type=int, help="most GPUs one pipeline may use (default 8)")
    serve.add_argument("--step-image", help="step image when a pipeline names none "
                                            "(default ghcr.io/stepchain/step:0.1.0)")
    serve.add_argument("--step-service-account",
                       help="service account of step pods (needs get/list/watch configmaps)")
    serve.add_argument("--drain-grace", type=int,
                       help="seconds a step drains on SIGTERM (Kubernetes; default 20)")
    serve.add_argument("--state-dir", help="local backend: configs, discovery files, logs; one "
                                           "live service per state dir (a second is refused)")
    serve.add_argument("--jaeger-url", metavar="URL",
                       help="Jaeger UI (e.g. http://localhost:16686): the web console links "
                            "the trace ids of recent requests to it")
    serve.add_argument("--log-level", default="info",
                       choices=("critical", "error", "warning", "info", "debug"))
    serve.set_defaults(func=_serve)

    render = commands.add_parser(
        "render", help="print the Kubernetes manifests of a pipeline JSON (like helm template)",
        description="Prints what `topology serve` would apply: the same policy checks (image and "
                    "hostPath allow-lists, GPU bound, namespace) from the same flags and "
                    "STEPCHAIN_* variables. Exit 1: invalid pipeline; 2: refused by the policy "
                    "or unusable settings.")
    render.add_argument("pipeline", help="pipeline JSON file ('-' for stdin)")
    render.add_argument("--strict", action="store_true",
                        help="refuse (exit 1) what is otherwise a warning, e.g. a next_step "
                             "naming no step of the pipeline (which ends the pipeline there)")
    render.add_argument("--namespace", help="the namespace the service manages (default: "
                                            "STEPCHAIN_NAMESPACE, else the pipeline's, else "
                                            "default); a pipeline naming another is refused")
    render.add_argument("--image", help="step image overriding the pipeline's own (checked "
                                        "against the image allow-list)")
    render.add_argument("--step-image", help="step image when the pipeline names none "
                                             "(default ghcr.io/stepchain/step:0.1.0)")
    render.add_argument("--image-allowlist", help="comma-separated globs step images must "
                                                  "match (default ghcr.io/stepchain/*)")
    render.add_argument("--hostpath-allowlist", help="comma-separated path prefixes allowed as "
                                                     "hostPath volumes (default: none)")
    render.add_argument("--max-gpus", type=int, help="most GPUs one pipeline may use "
                                                     "(default 8)")
    render.add_argument("--drain-grace", type=int, default=None,
                        help="seconds a step drains on SIGTERM (default 20)")
    render.add_argument("--step-service-account",
                        help="service account of the step pods; needs list/watch on configmaps "
                             "(default stepchain-step, what the Helm chart creates)")
    render.set_defaults(func=_render)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from topology.backend import BackendError
    from topology.local.owner import StateDirOwner
    from topology.service.app import create_app
    from topology.service.auth import token_path
    from topology.service.settings import settings_from

    # In this order: the state dir's lock before anything in it is written (the token) or
    # brought back (the pipelines); then the listen port, before the pipelines come back, so a
    # service that cannot serve starts no step process.
    owner: StateDirOwner | None = None
    try:
        settings = settings_from({k: getattr(args, k) for k in SERVE_FLAGS}, os.environ)
        if settings.backend == "local":
            owner = StateDirOwner.claim(settings.state_dir)
    except (ValueError, BackendError) as exc:  # StateDirTaken names the owner and the way out
        print(f"stepchain topology serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"stepchain topology serve: cannot use the state dir {settings.state_dir}: {exc}",
              file=sys.stderr)
        return 2
    try:
        sock = socket.create_server((settings.host.strip("[]"), settings.port),
                                    family=socket.AF_INET6 if ":" in settings.host
                                    else socket.AF_INET)
    except OSError as exc:
        if owner is not None:
            owner.release()
        print(f"stepchain topology serve: cannot listen on {settings.host}:{settings.port}: "
              f"{exc.strerror}", file=sys.stderr)
        return 2
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{sock.getsockname()[1]}/"
    try:
        if owner is not None:
            owner.announce(url)
        app = create_app(settings)
    except (ValueError, BackendError) as exc:
        sock.close()
        if owner is not None:
            owner.release()
        print(f"stepchain topology serve: {exc}", file=sys.stderr)
        return 2
    served = app.state.settings
    if served.auth:
        kept = (args.token_file or os.environ.get("STEPCHAIN_TOKEN_FILE")
                or token_path(served.state_dir))
        print(f"stepchain topology serve: {url}?token={served.token}\n"
              f"    writes need 'Authorization: Bearer <token>'; the token is in {kept}",
              flush=True)
    else:
        print(f"stepchain topology serve: {url} (auth OFF: --no-auth)", flush=True)
    # uvicorn turns SIGTERM/SIGINT into a graceful shutdown, which runs the app's lifespan:
    # the local backend stops its step processes there. It then re-raises the signal to the
    # handler it found; a no-op one for SIGTERM makes a clean stop exit 0, as a service should.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level))
    try:
        server.run(sockets=[sock])
    finally:
        if owner is not None:  # the steps are stopped (the app's lifespan): the dir is free
            owner.release()
    return 0


def _render(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from topology.kube.manifests import manifests_yaml, render_manifests
    from topology.pipeline.graph import parse_pipeline
    from topology.pipeline.model import PipelineInvalid
    from topology.service.security import check_policy
    from topology.service.settings import RENDER_FLAGS, render_options, render_settings_from

    try:
        if args.pipeline == "-":
            data = json.load(sys.stdin)
        else:
            with open(args.pipeline, encoding="utf-8") as fh:
                data = json.load(fh)
        pipeline = parse_pipeline(data, strict=args.strict)
    except OSError as exc:
        print(f"stepchain topology render: cannot read {args.pipeline}: {exc.strerror}",
              file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"stepchain topology render: {args.pipeline} is not JSON: {exc}", file=sys.stderr)
        return 2
    except PipelineInvalid as exc:
        _print_errors(f"{args.pipeline} is not a valid pipeline:", exc)
        return 1
    for warning in pipeline.warnings:  # accepted, never silently (--strict refuses them)
        print(f"stepchain topology render: warning: {warning}", file=sys.stderr)
    flags = {k: getattr(args, k) for k in RENDER_FLAGS}
    # Without a service that manages a namespace, the pipeline's own is the one it targets.
    if flags["namespace"] is None and not os.environ.get("STEPCHAIN_NAMESPACE"):
        flags["namespace"] = pipeline.namespace
    if args.image:  # the flag replaces the pipeline's image (and is checked like it)
        flags["step_image"] = args.image
        pipeline = replace(pipeline, image=None)
    try:
        settings = render_settings_from(flags, os.environ)
        check_policy(pipeline, settings)
    except PipelineInvalid as exc:
        _print_errors(f"{args.pipeline} is refused by the topology service's policy:", exc)
        return 2
    except ValueError as exc:
        print(f"stepchain topology render: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(manifests_yaml(render_manifests(pipeline, render_options(settings))))
    return 0


def _print_errors(headline: str, exc: PipelineInvalid) -> None:
    from topology.pipeline.model import format_loc

    print(f"stepchain topology render: {headline}", file=sys.stderr)
    for error in exc.errors:
        print(f"  {format_loc(error['loc'])}: {error['msg']}", file=sys.stderr)
