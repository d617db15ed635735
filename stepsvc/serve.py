"""``stepchain step serve``: one pipeline step wired together (config, discovery, the gRPC
server, its HTTP face, telemetry, the lifeline) until SIGTERM drains it."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from stepsvc import cli_args, limits

#: Drain grace of a step whose topology service died: it must be gone within ~2 s.
ORPHAN_GRACE_S = 1.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `step serve` to the `stepchain` command."""
    step = sub.add_parser("step", help="run a pipeline step")
    step_sub = step.add_subparsers(dest="step_command", metavar="COMMAND", required=True)
    serve = step_sub.add_parser(
        "serve", help="serve one pipeline step over gRPC",
        description="Serve one pipeline step: StepService, server reflection and "
                    "grpc.health.v1 on --port. SIGTERM drains gracefully and exits 0. "
                    "Listens on every interface (0.0.0.0) by default, as a container needs: "
                    "gRPC, the HTTP face and metrics alike; --host 127.0.0.1 keeps all three "
                    "on loopback (a laptop).")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help="PIPELINE_CONFIG file (YAML or JSON)")
    source.add_argument("--config-env", metavar="VAR",
                        help="environment variable holding the config (e.g. PIPELINE_CONFIG)")
    serve.add_argument("--port", type=cli_args.port, default=50051,
                       help="gRPC port, 0..65535 (default 50051; 0 = any)")
    serve.add_argument("--host", default="0.0.0.0",
                       help="address the gRPC, HTTP (--http-port) and metrics (--metrics-port) "
                            "ports listen on (default 0.0.0.0: every interface)")
    serve.add_argument(
        "--discovery", metavar="kubernetes|static:FILE",
        help="how to find the next steps (default: kubernetes inside a cluster; required "
             "elsewhere when the step has next steps)")
    serve.add_argument("--namespace", help="Kubernetes namespace to watch (default: the pod's)")
    serve.add_argument("--http-port", type=cli_args.port, default=None,
                       help="HTTP face (POST /process, as the Flask-era pipeline) port, "
                            "0..65535; 0 = off (default: $SERVICE_PORT if set, else 8080 in "
                            "Kubernetes, else off)")
    serve.add_argument("--metrics-port", type=cli_args.port, default=9464,
                       help="Prometheus metrics port, 0..65535 (default 9464; 0 = off)")
    serve.add_argument("--max-inflight", type=cli_args.positive_int, default=16,
                       help="requests processed at once (default 16)")
    serve.add_argument("--max-queue", type=cli_args.non_negative_int, default=64,
                       help="requests waiting for a slot before RESOURCE_EXHAUSTED (default 64)")
    serve.add_argument("--max-queue-wait-ms", type=int, default=0,
                       help="refuse at once (RESOURCE_EXHAUSTED) when the expected wait for a "
                            "slot is longer; a request whose remaining deadline is shorter than "
                            "the expected wait is refused at once anyway (default 0 = one "
                            "average request's time in the step; -1 = no bound beyond the "
                            "deadline and --max-queue)")
    serve.add_argument("--max-memory-mb", type=cli_args.positive_int, default=None,
                       help="memory budget for running requests, MiB: a request is admitted "
                            "only when the bytes it will hold (decoded input, output, buffers; "
                            "from its header) fit (default: 3/4 of the container's memory "
                            "limit, else 512)")
    serve.add_argument("--max-message-mb", type=cli_args.message_mb,
                       default=limits.DEFAULT_MAX_MESSAGE_MB,
                       help=f"largest gRPC message in or out, MiB, 1..{limits.MAX_MESSAGE_MB} "
                            f"(default {limits.DEFAULT_MAX_MESSAGE_MB})")
    serve.add_argument(
        "--max-pixels", type=cli_args.int_range(1, cli_args.native_limit("MAX_PIXELS")),
        default=limits.DEFAULT_MAX_PIXELS,
        help=f"largest image accepted or produced, in pixels (default "
             f"{limits.DEFAULT_MAX_PIXELS}, about 8K x 5K, sized for a 1 GiB pod; at most "
             "native's MAX_PIXELS, 16K x 16K, which needs several GB)")
    serve.add_argument(
        "--max-passes", type=cli_args.int_range(1, cli_args.native_limit("MAX_PASSES")),
        default=limits.DEFAULT_MAX_PASSES,
        help=f"most kernel passes one request may ask for with overrides.passes (default "
             f"{limits.DEFAULT_MAX_PASSES}; more is INVALID_ARGUMENT)")
    serve.add_argument("--grace", type=cli_args.non_negative_seconds, default=30.0,
                       help="seconds in-flight requests get to finish on SIGTERM; then the "
                            "process exits anyway (default 30)")
    serve.add_argument("--shm-dir", metavar="DIR",
                       default=os.environ.get("STEPCHAIN_SHM_DIR") or "/dev/shm",
                       help="frame directory for shared memory with co-located steps "
                            "(default $STEPCHAIN_SHM_DIR or /dev/shm; a pod's in-memory emptyDir "
                            "in Kubernetes); used only with steps that advertise the same one")
    serve.add_argument("--no-shm", action="store_true",
                       help="never use shared memory: pixels always travel in the gRPC message")
    serve.add_argument("--forward-timeout", type=cli_args.positive_seconds, default=60.0,
                       help="deadline for the next hop when the caller set none, > 0 "
                            "(default 60 s)")
    serve.add_argument(
        "--keepalive", type=cli_args.float_range(limits.MIN_KEEPALIVE_S), default=limits.DEFAULT_KEEPALIVE_S, metavar="SECONDS",
        help="ping every connection to a next step each SECONDS and drop it when a ping is not "
             "answered within SECONDS more: a next step that vanished without a reset (node "
             "gone, partition, frozen process) costs a request at most ~2 x SECONDS before "
             f"failover (default {limits.DEFAULT_KEEPALIVE_S:g})")
    serve.add_argument(
        "--next-step-wait", type=cli_args.non_negative_seconds, default=limits.DEFAULT_NEXT_STEP_WAIT_S,
        metavar="SECONDS",
        help="when no next step answers at all (down, restarting, channels in reconnect "
             "back-off), wait up to SECONDS, within the request's deadline, for one to come back "
             f"before answering UNAVAILABLE (default {limits.DEFAULT_NEXT_STEP_WAIT_S:g}; 0 = fail at once)")
    serve.add_argument(
        "--max-connection-age", type=cli_args.non_negative_seconds, default=30.0,
        help="seconds before a client connection is asked to reconnect (GOAWAY), so clients "
             "re-resolve dns:/// names and reach new replicas (default 30; 0 = never)")
    serve.add_argument(
        "--max-connection-age-grace", type=cli_args.non_negative_seconds, default=None,
        help="seconds requests on an aged connection get to finish (default: --forward-timeout)")
    serve.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    """`stepchain step serve`: run until SIGTERM/SIGINT, then drain and exit 0."""
    logging.basicConfig(level=os.environ.get("STEPCHAIN_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from native.registry import entry, load_plugins
    from stepsvc.routing.discovery import make_discovery
    from stepsvc.routing.reachability import NextStepWatch
    from stepsvc.routing.router import is_last_step
    from stepsvc.step.config import load_config
    from stepsvc.step.server import ServerSettings, build_server
    from stepsvc.telemetry.observer import StepTelemetry

    load_plugins()  # first: a broken plugin is one logged line now, never a failed start
    try:
        config = load_config(path=args.config) if args.config else load_config(env=args.config_env)
        telemetry = StepTelemetry.from_env(config)  # OTEL_* env; ValueError names the variable
    except ValueError as exc:
        print(f"stepchain step serve: {exc}", file=sys.stderr)
        return 2
    for warning in config.warnings:  # accepted, never silently: a link to no step ends there
        logging.getLogger("stepchain.step").warning("%s", warning)
    step = config.this_step()
    spec = args.discovery
    if spec is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        spec = "kubernetes"
    if spec is None and not is_last_step(step):
        print(f"stepchain step serve: step {step.id} forwards to {step.next_step}; say how to "
              "find them with --discovery kubernetes or --discovery static:FILE",
              file=sys.stderr)
        return 2
    try:
        discovery: Any = (make_discovery(spec, config.pipeline_id, namespace=args.namespace,
                                         port=args.port) if spec else _NoDiscovery())
    except ValueError as exc:
        print(f"stepchain step serve: --discovery: {exc}", file=sys.stderr)
        return 2
    settings = ServerSettings(
        host=args.host, port=args.port, max_inflight=args.max_inflight, max_queue=args.max_queue,
        max_queue_wait_ms=args.max_queue_wait_ms, max_memory_mb=args.max_memory_mb or 0,
        max_message_mb=args.max_message_mb, max_pixels=args.max_pixels,
        max_passes=args.max_passes, grace=args.grace, forward_timeout=args.forward_timeout,
        metrics_port=args.metrics_port, max_connection_age=args.max_connection_age,
        max_connection_age_grace=args.max_connection_age_grace,
        keepalive=args.keepalive, next_step_wait=args.next_step_wait,
        shm_dir="" if args.no_shm else args.shm_dir)
    discovery.start()
    try:
        server = build_server(config, discovery, settings,
                              interceptors=telemetry.server_interceptors(),
                              client_interceptors=telemetry.client_interceptors(),
                              observer=telemetry)
    except (OSError, RuntimeError) as exc:
        discovery.close()
        telemetry.close()
        print(f"stepchain step serve: --host {args.host} --port {args.port}: {exc}",
              file=sys.stderr)
        return 1
    if telemetry.metrics is not None:
        telemetry.metrics.watch_admission(server.servicer.admission)
        # Whether each next step can be reached, so "ready" is not all that the step says.
        telemetry.metrics.watch_next_steps(
            NextStepWatch(step.next_step, discovery, server.servicer.forwarder).health)
    try:
        metrics_port = (telemetry.start_metrics_http(settings.metrics_port, args.host)
                        if settings.metrics_port else 0)
    except OSError as exc:
        server.stop()
        telemetry.close()
        print(f"stepchain step serve: --metrics-port {settings.metrics_port}: {exc}; give each "
              "step on this host its own port, or 0 to turn metrics off", file=sys.stderr)
        return 1

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from stepsvc.step.lifeline import lifeline_fd, watch_lifeline

    orphaned = threading.Event()  # the service that started us died: stop within ~2 s
    lifeline = lifeline_fd(os.environ)
    if lifeline is not None:

        def service_gone() -> None:
            orphaned.set()
            stop.set()

        watch_lifeline(lifeline, service_gone)
    server.start()
    from stepsvc.http.server import start_http_face
    from stepsvc.http.translate import resolve_http_port

    try:
        http_port = resolve_http_port(args.http_port, os.environ)
        http = (start_http_face(server, http_port, host=args.host, tracing=telemetry.tracing,
                                client_interceptors=telemetry.client_interceptors())
                if http_port else None)
    except (ValueError, OSError) as exc:
        server.stop()
        telemetry.close()
        print(f"stepchain step serve: --http-port: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    log = logging.getLogger("stepchain.step")
    if http is not None:
        log.info("http: POST http://%s:%d/process", args.host, http.port)
    log.info("pipeline %s step %d (%s) serving on %s:%d (next: %s, discovery: %s)",
             config.pipeline_id, step.id, step.type, args.host, server.port,
             step.next_step or "none, last step", spec or "none")
    kernel = entry(step.type)
    log.info("kernel: %s (%s%s)", kernel.spec.name, kernel.source,
             "" if kernel.spec.releases_gil else "; holds the GIL while it computes")
    log.info("metrics: %s; tracing: %s", f"http://{args.host}:{metrics_port}/metrics"
             if metrics_port else "off", "on" if telemetry.tracing.enabled else "off")
    while not stop.wait(1.0):
        pass
    grace = min(settings.grace, ORPHAN_GRACE_S) if orphaned.is_set() else settings.grace
    log.info("draining: up to %.1f s for in-flight requests", grace)
    finished = server.drain(grace)
    if http is not None:
        http.stop()
    telemetry.close()  # flushes queued spans before the process exits
    if finished:
        log.info("stopped (all requests finished)")
        return 0
    # A kernel call cannot be interrupted, and Python waits for every worker thread before it
    # exits: without this a long kernel would keep a drained step alive past --grace.
    log.warning("stopped: grace period (%.1f s) ran out; %d request(s) cut off; exiting without "
                "waiting for their kernels", grace, server.cut_off)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _NoDiscovery:
    """The last step needs no discovery: nothing is ever active."""

    def start(self) -> None:
        pass

    def active(self) -> dict[int, str]:
        return {}

    def close(self) -> None:
        pass
