# The topology image: the HTTP API that turns pipeline JSON into per-step ConfigMaps,
# Deployments and Services (helm/stepchain runs it).
# Build from the repository root:
#   docker build -f docker/topology.Dockerfile -t REGISTRY/stepchain-topology:0.1.0 .
# It holds the same stepchain wheel as the step image: pipelines are validated against the same
# kernel registry the steps run.

# --- builder: compiles the C/OpenMP kernels into the stepchain wheel, plus every dependency ---
FROM python:3.11-slim AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY native/ native/
COPY protos/ protos/
COPY stepsvc/ stepsvc/
COPY topology/ topology/
COPY loadtest/ loadtest/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- final: Python, the OpenMP runtime and the wheels; no compiler, non-root ---
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels stepchain \
    && rm -rf /wheels
RUN groupadd --gid 10001 stepchain \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin stepchain
# The pod runs with a read-only root filesystem and an emptyDir on /tmp.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
# HTTP API, /healthz and /metrics.
EXPOSE 8080
ENTRYPOINT ["stepchain"]
CMD ["topology", "serve", "--backend", "kubernetes", "--host", "0.0.0.0", "--port", "8080"]
