"""Client commands: ``stepchain submit`` (one image, tiles, a directory) and ``request``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stepsvc import cli_args


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `submit` and `request` to the `stepchain` command."""
    submit = sub.add_parser(
        "submit", help="send an image (or a directory of images) through a pipeline",
        description="Send IMAGE through the pipeline at --target and print the per-step "
                    "timings. With --tile, send it as padded tiles (none lost: each is retried "
                    "on UNAVAILABLE, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED) and print "
                    "'tiles: expected N, done N, retried R, failed F'. With a directory, "
                    "process every image in it into --out OUTDIR.")
    submit.add_argument("image", metavar="IMAGE|DIR",
                        help="input image (PNG/JPEG sent as is; other formats as raw; .npy is "
                             "raw uint8 H x W x C), or a directory of images")
    submit.add_argument("--target", required=True, metavar="HOST:PORT",
                        help="the entry step (any gRPC target: host:port, "
                             "ipv4:127.0.0.1:p1,127.0.0.1:p2, dns:///name:port)")
    submit.add_argument("--out", required=True, metavar="OUT.png|OUTDIR",
                        help="where to write the result (.png, .jpg or .jpeg; .npy too with "
                             "--tile or a directory), or the output directory")
    submit.add_argument("--tile", type=cli_args.positive_int, default=0, metavar="SIZE",
                        help="split the image into SIZE x SIZE tiles padded by the pipeline's "
                             "halo, send each as its own request and reassemble (identical to "
                             "the untiled result; for images beyond one request's limits)")
    submit.add_argument("--tile-concurrency", type=cli_args.positive_int, default=4,
                        metavar="N", help="tiles in flight at once per image (default 4)")
    submit.add_argument("--concurrency", type=cli_args.positive_int, default=2, metavar="N",
                        help="images processed at once for a directory (default 2)")
    submit.add_argument("--retries", type=cli_args.positive_int, default=8, metavar="N",
                        help="tries per tile (or image) before it counts as failed (default 8)")
    submit.add_argument("--json", action="store_true", help="print JSON instead of a table")
    submit.add_argument("--threads", type=_threads, default=0,
                        help="OpenMP threads for every step (default: each step's own)")
    submit.add_argument("--passes", type=_passes, default=0,
                        help="repeat every kernel N times (heavier on purpose)")
    submit.add_argument("--raw", action="store_true", help="decode locally and send raw pixels")
    submit.add_argument("--timeout", type=cli_args.positive_seconds, default=60.0,
                        help="deadline in seconds, > 0 (default 60)")
    submit.set_defaults(func=submit_command)

    request = sub.add_parser("request", help="print a grpcurl-ready JSON ProcessRequest")
    request.add_argument("image", help="input image")
    request.add_argument("--raw", action="store_true",
                         help="send raw pixels instead of the PNG/JPEG file")
    request.add_argument("--threads", type=_threads, default=0, help="overrides.threads")
    request.add_argument("--passes", type=_passes, default=0, help="overrides.passes")
    request.add_argument("--output-encoding", choices=("raw", "png", "jpeg"), default="png",
                         help="encoding of the result image (default png)")
    request.set_defaults(func=request_command)



#: Per-request overrides: 0 = the step's own setting, else what the kernels accept.
_threads = cli_args.int_range(0, cli_args.native_limit("MAX_THREADS"))
_passes = cli_args.int_range(0, cli_args.native_limit("MAX_PASSES"))


def submit_command(args: argparse.Namespace) -> int:
    """`stepchain submit`: send one image, write the result, print the timing table (tiles
    and directories: :mod:`stepsvc.client.batch`)."""
    import grpc

    if args.tile or Path(args.image).is_dir():
        from stepsvc.client import batch

        return batch.run(args)

    from stepsvc.client import call
    from stepsvc.client.tile_submit import over_a_size_limit
    from stepsvc.telemetry import Tracing, current_trace_id

    try:
        encoding = call.output_encoding_for(args.out)
        call.check_output_path(args.out)
        image = call.image_message(args.image, raw=args.raw)
    except (ValueError, OSError) as exc:
        print(f"stepchain submit: {exc}", file=sys.stderr)
        return 2
    request = call.build_request(image, output_encoding=encoding, threads=args.threads,
                                 passes=args.passes)
    try:
        tracing = Tracing.from_env("stepchain-submit")
    except ValueError as exc:
        print(f"stepchain submit: {exc}", file=sys.stderr)
        return 2
    channel = tracing.intercept_channel(call.connect(args.target))
    trace_id = ""
    try:
        # The root span of the request's trace; the channel's interceptor sends its context.
        with tracing.span("stepchain submit", {"stepchain.target": args.target,
                                               "stepchain.image": str(args.image)}):
            trace_id = current_trace_id()
            result = call.submit(channel, request, timeout=args.timeout)
    except grpc.RpcError as err:
        code = err.code() if hasattr(err, "code") else None
        details = err.details() if hasattr(err, "details") else str(err)
        name = code.name if code is not None else "ERROR"
        print(f"stepchain submit: {args.target}: {name}: {details}", file=sys.stderr)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and over_a_size_limit(details or ""):
            print(f"stepchain submit: {TILE_HINT}", file=sys.stderr)
        if trace_id:
            print(f"trace: {trace_id}", file=sys.stderr)
        return 1
    finally:
        channel.close()
        tracing.shutdown()  # exports the client's spans before exiting
    if not result.response.trace_id:  # steps without tracing: the client's own trace
        result.response.trace_id = trace_id
    try:
        Path(args.out).write_bytes(result.response.image.data)
    except OSError as exc:  # checked before sending; the directory may have changed since
        print(f"stepchain submit: --out {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    if args.json:
        print(call.dumps(call.summary_json(result, args.out)))
    else:
        print(call.summary(result, args.out))
    return 0


#: What to do with an image one request cannot carry (said after the step's refusal).
TILE_HINT = ("the image is larger than one request may be: --tile 2048 sends it as tiles, each "
             "a request of its own, and reassembles the result (not through a pipeline with "
             "classify, which measures the whole image)")


def request_command(args: argparse.Namespace) -> int:
    """`stepchain request`: print a ProcessRequest as grpcurl JSON."""
    from stepsvc.client import call
    from stepsvc.frames import codec

    encodings = {"raw": codec.RAW, "png": codec.PNG, "jpeg": codec.JPEG}
    try:
        image = call.image_message(args.image, raw=args.raw)
    except (ValueError, OSError) as exc:
        print(f"stepchain request: {exc}", file=sys.stderr)
        return 2
    request = call.build_request(image, output_encoding=encodings[args.output_encoding],
                                 threads=args.threads, passes=args.passes)
    print(call.request_json(request))
    return 0
