# The step image: one gRPC step server (native OpenMP kernels) per pipeline step.
# Build from the repository root:
#   docker build -f docker/step.Dockerfile -t REGISTRY/stepchain-step:0.1.0 .
# The topology service runs it with the step's ConfigMap in PIPELINE_CONFIG.

# --- builder: compiles the C/OpenMP kernels into the stepchain wheel, plus every dependency ---
FROM python:3.11-slim AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
# Empty: a portable build (AVX2 paths are still picked at run time); e.g. x86-64-v3 to target newer CPUs.
ARG STEPCHAIN_NATIVE_ARCH=""
ENV STEPCHAIN_NATIVE_ARCH=${STEPCHAIN_NATIVE_ARCH}
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
# The pods run with a read-only root filesystem and an emptyDir on /tmp.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
# gRPC (with grpc.health.v1 and reflection), the HTTP face (POST /process) and Prometheus metrics.
EXPOSE 50051 8080 9464
ENTRYPOINT ["stepchain"]
CMD ["step", "serve", "--config-env", "PIPELINE_CONFIG", "--port", "50051", "--discovery", "kubernetes", "--metrics-port", "9464", "--http-port", "8080"]
