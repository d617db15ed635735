# The step image: one gRPC step server (native OpenMP kernels) per pipeline step. The topology
# service runs it with the step's ConfigMap in PIPELINE_CONFIG.
#
# `make images` builds it with podman on a Debian bookworm base made by debootstrap (no Docker
# engine, no registry; see docker/images.sh). With Docker, from the repository root, on the
# public Debian image:
#   docker build -f docker/step.Dockerfile -t REGISTRY/stepchain-step:0.1.0 .
# Build arguments: BASE_IMAGE (a Debian bookworm), VERSION / REVISION / SOURCE (OCI labels),
# STEPCHAIN_NATIVE_ARCH (-march of the kernels; empty: the compiler's baseline, x86-64 on
# amd64, with the AVX2 paths still chosen at run time).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# --- builder: Debian's Python and compilers, a virtual environment with the pinned
# dependencies and the kernels, and the final image's root filesystem (docker/rootfs.sh) ---
FROM ${BASE_IMAGE} AS builder
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev libgomp1 gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/stepchain
WORKDIR /src
# The dependencies get their own layers (a code change does not reinstall them), pinned by the
# repository's constraints. The optional secret `pip-ca` is a CA bundle for a TLS-intercepting
# proxy (make images passes the host's); it is never stored in a layer.
COPY .ci/constraints.txt docker/step-requirements.txt ./
RUN --mount=type=secret,id=pip-ca \
    cert=""; if [ -s /run/secrets/pip-ca ]; then cert="--cert /run/secrets/pip-ca"; fi; \
    /opt/stepchain/bin/pip install --no-cache-dir --disable-pip-version-check $cert \
        -c constraints.txt -r step-requirements.txt setuptools wheel
COPY docker/trim-venv.sh docker/rootfs.sh ./
RUN sh trim-venv.sh && sh rootfs.sh
# The step server and topology/ (a job's Indexed Job pods run `stepchain jobs run` from this
# image) without its service room (the topology image serves it: FastAPI is not here); no load
# tests (the `stepchain` command leaves out the commands of packages that are not installed).
COPY pyproject.toml setup.py README.md ./
COPY native/ native/
COPY protos/ protos/
COPY stepsvc/ stepsvc/
COPY topology/ topology/
ARG STEPCHAIN_NATIVE_ARCH=""
RUN rm -rf topology/service \
    && STEPCHAIN_NATIVE_ARCH="$STEPCHAIN_NATIVE_ARCH" /opt/stepchain/bin/pip install \
        --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation . \
    && /opt/stepchain/bin/pip uninstall -y -q setuptools wheel pip

# --- final: Python, the libraries it loads and the virtual environment; no shell, no package
# manager, no compiler; runs as uid 10001 ---
FROM scratch
COPY --from=builder /rootfs /
COPY --from=builder /opt/stepchain /opt/stepchain
# Read-only root filesystem: Python writes no bytecode; HOME and temporary files are on the /tmp
# mount (an emptyDir in Kubernetes), frames shared between co-located steps on /frames.
ENV PATH=/opt/stepchain/bin:/usr/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
# gRPC (with grpc.health.v1 and reflection: the pods' native gRPC probes), the HTTP face
# (POST /process) and Prometheus metrics.
EXPOSE 50051 8080 9464
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="stepchain-step" \
      org.opencontainers.image.description="stepchain gRPC step server with native OpenMP image kernels" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["stepchain"]
CMD ["step", "serve", "--config-env", "PIPELINE_CONFIG", "--port", "50051", "--discovery", "kubernetes", "--metrics-port", "9464", "--http-port", "8080"]
