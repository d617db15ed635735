# The topology image: the HTTP API that turns pipeline JSON into per-step ConfigMaps,
# Deployments and Services (helm/stepchain runs it). It holds the step server too: pipelines are
# validated against the kernels the steps run, and `--backend local` starts steps inside it.
#
# `make images` builds it with podman on a Debian bookworm base made by debootstrap (no Docker
# engine, no registry; see docker/images.sh). With Docker, from the repository root, on the
# public Debian image:
#   docker build -f docker/topology.Dockerfile -t REGISTRY/stepchain-topology:0.1.0 .
# Build arguments: as docker/step.Dockerfile.
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
# Pinned dependencies in their own layers; `pip-ca`: see docker/step.Dockerfile.
COPY .ci/constraints.txt docker/step-requirements.txt ./
RUN --mount=type=secret,id=pip-ca \
    cert=""; if [ -s /run/secrets/pip-ca ]; then cert="--cert /run/secrets/pip-ca"; fi; \
    /opt/stepchain/bin/pip install --no-cache-dir --disable-pip-version-check $cert \
        -c constraints.txt -r step-requirements.txt setuptools wheel
# The topology service's web stack on top (the layers above are the step image's).
COPY docker/topology-requirements.txt ./
RUN --mount=type=secret,id=pip-ca \
    cert=""; if [ -s /run/secrets/pip-ca ]; then cert="--cert /run/secrets/pip-ca"; fi; \
    /opt/stepchain/bin/pip install --no-cache-dir --disable-pip-version-check $cert \
        -c constraints.txt -r topology-requirements.txt
COPY docker/trim-venv.sh docker/rootfs.sh ./
RUN sh trim-venv.sh && sh rootfs.sh
# The service, its console and the step server; no load tests.
COPY pyproject.toml setup.py README.md ./
COPY native/ native/
COPY protos/ protos/
COPY stepsvc/ stepsvc/
COPY topology/ topology/
ARG STEPCHAIN_NATIVE_ARCH=""
RUN STEPCHAIN_NATIVE_ARCH="$STEPCHAIN_NATIVE_ARCH" /opt/stepchain/bin/pip install \
        --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation . \
    && /opt/stepchain/bin/pip uninstall -y -q setuptools wheel pip

# --- final: Python, the libraries it loads and the virtual environment; no shell, no package
# manager, no compiler; runs as uid 10001 ---
FROM scratch
COPY --from=builder /rootfs /
COPY --from=builder /opt/stepchain /opt/stepchain
# Read-only root filesystem: no bytecode written; HOME (the local backend's state dir and
# token) and temporary files on the /tmp mount (an emptyDir in Kubernetes).
ENV PATH=/opt/stepchain/bin:/usr/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
# HTTP API, the console, /healthz (the chart's probes) and /metrics.
EXPOSE 8080
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="stepchain-topology" \
      org.opencontainers.image.description="stepchain topology service: pipeline JSON to Kubernetes step Deployments" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["stepchain"]
CMD ["topology", "serve", "--backend", "kubernetes", "--host", "0.0.0.0", "--port", "8080"]
