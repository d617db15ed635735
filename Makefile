# stepchain — the two commands a newcomer runs: `make demo` and `make test`.
# Both create .venv and install stepchain editable (building the native OpenMP kernels);
# `make demo` stops at the runtime, `make test` adds the test tools (OpenCV, SciPy,
# scikit-image, kmock, grpcurl, ruff, mypy, ...).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.stepchain-runtime
TEST_STAMP    := $(VENV)/.stepchain-test
PLUGINS_STAMP := $(VENV)/.stepchain-example-plugins
# The example plugins (examples/plugins/*): installed into the test venv as a user installs a
# plugin, so the suite runs them through every surface. Reinstalled when their sources change.
EXAMPLE_PLUGINS := $(sort $(dir $(wildcard examples/plugins/*/pyproject.toml)))
EXAMPLE_PLUGIN_SOURCES := $(wildcard examples/plugins/*/pyproject.toml examples/plugins/*/setup.py \
	examples/plugins/*/*/*.py examples/plugins/*/src/*.c examples/plugins/*/src/*.h)
NATIVE_SOURCES := $(wildcard native/src/*.c native/src/*.h native/include/stepchain/*.h) native/_native.c setup.py
PYTEST_ARGS ?=
# setuptools prints an "Editable installation" note for every editable install that maps a
# package from another folder (stepchain.v1 lives in protos/, on purpose); keep the build quiet.
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip
# Every install takes the repository's pinned versions (pyproject.toml keeps the ranges users
# get); `make constraints` regenerates them after a dependency changes.
CONSTRAINTS := .ci/constraints.txt

.PHONY: all runtime venv native proto lint typecheck unit test test-fast demo bench bench-peers helm \
	test-tools constraints image-tools images clean tools cluster-up cluster-down jaeger-up jaeger-down

all: venv

# setuptools >= 77 reads pyproject.toml's license expression; stepchain is built with the venv's
# own setuptools (no isolated build environment to create on every install, `make native` too).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) 'setuptools>=77'

# Editable install of the runtime: builds native/_native*.so in place, pulls the dependencies
# the servers, the CLI and the demo need, nothing else.
$(RUNTIME_STAMP): pyproject.toml $(CONSTRAINTS) $(NATIVE_SOURCES) | $(BIN)/python
	$(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation -e .
	touch $@

# The test tools on top of the runtime (the `test` extra).
$(TEST_STAMP): $(RUNTIME_STAMP) pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation -e '.[test]'
	touch $@

# Not editable, no build isolation: built against this venv's stepchain (the C plugin includes
# native.get_include()), copied into site-packages like any installed plugin.
$(PLUGINS_STAMP): $(TEST_STAMP) $(EXAMPLE_PLUGIN_SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps --force-reinstall $(EXAMPLE_PLUGINS)
	touch $@

runtime: $(RUNTIME_STAMP)

# The developer set-up: runtime + test tools + the example plugins.
venv: $(TEST_STAMP) $(PLUGINS_STAMP)

# Rebuild only the kernels after editing native/src (fast path while developing).
native: | $(BIN)/python
	$(BIN)/python setup.py -q build_ext --inplace

# Pin pyproject.toml's dependencies and every extra in .ci/constraints.txt (a resolve in a fresh
# venv; the current pins are kept, UPGRADE=1 re-resolves them all); commit it with the
# dependency change.
constraints:
	$(PYTHON) .ci/constraints.py $(if $(UPGRADE),--upgrade)

# Regenerate the gRPC code from protos/ (tests fail when the committed copy is stale).
proto: venv
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos protos/stepchain/v1/step.proto

# A real Helm binary for the chart tests (cached under .cache/).
helm: venv
	bash helm/fetch-helm.sh

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy native stepsvc topology loadtest bench

# The real peers the tests run (kube-apiserver, kube-controller-manager, kube-scheduler and
# kubectl from k8s.io/kubernetes, etcd, KWOK, Jaeger v2, Toxiproxy), built from pinned Go modules
# (tests/tools/) into ${STEPCHAIN_TOOLS_DIR:-.cache/tools}/bin (a shared cache when set). Cold:
# tens of minutes on 2 cores; a second make builds nothing.
tools:
	bash tests/tools/build.sh

# A local Kubernetes control plane on 127.0.0.1 (etcd, kube-apiserver, controller-manager,
# scheduler, KWOK fake nodes): admin kubeconfig in out/cluster/kubeconfig.
cluster-up: venv tools
	$(BIN)/python tests/control_plane.py up

cluster-down:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) tests/control_plane.py down

# Jaeger v2 all-in-one (in-memory) on 127.0.0.1: OTLP 4317/4318, query API and UI 16686.
jaeger-up: venv tools
	$(BIN)/python tests/jaeger_server.py up

jaeger-down:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) tests/jaeger_server.py down

# Chromium + chromium-driver (console browser test), tmux (`stepchain top` test), iproute2,
# nftables and socat (network-fault tests), when missing.
test-tools:
	sh tests/install-test-tools.sh

# Debian's podman, runc, skopeo and debootstrap for `make images`, containerd and
# docker-registry for the archive tests, when missing (root).
image-tools:
	sh docker/install-image-tools.sh

# The step and topology images (rootful podman, a debootstrap Debian base, no Docker engine, no
# registry) as stepchain-step:<version> and stepchain-topology:<version>, exported as OCI
# archives under out/images/. Cached: the base is made once, unchanged layers are reused.
images: image-tools
	bash docker/images.sh

# `make test` builds the images first (cached after the first run): the tests marked slow run
# them as real containers.
unit: venv helm test-tools tools images
	$(BIN)/python -m pytest --durations=40 $(PYTEST_ARGS)

test: lint typecheck unit

# The same without the tests marked slow (processes, Locust runs, Helm, fuzzers: each over ~5 s).
test-fast: lint typecheck venv helm test-tools
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: runtime
	$(BIN)/python examples/demo.py

bench: runtime
	$(BIN)/stepchain bench kernels

# stepchain beside Ray Serve and BentoML and the Flask-era HTTP+JPEG steps, run from a virtual
# environment of its own (BentoML cannot be installed within .ci/constraints.txt's OpenTelemetry
# pins): the runtime plus ray[serve] and bentoml at the versions in .ci/peers-constraints.txt.
# BENCH_ARGS=--quick for a short run.
PEERS_VENV ?= .venv-peers
BENCH_ARGS ?=
$(PEERS_VENV)/.stepchain-peers: pyproject.toml .ci/peers-constraints.txt $(NATIVE_SOURCES)
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q -c .ci/peers-constraints.txt 'setuptools>=77'
	PYTHONWARNINGS="ignore:Editable installation" $(PEERS_VENV)/bin/python -m pip install -q \
		-c .ci/peers-constraints.txt --no-build-isolation -e . 'ray[serve]' bentoml scikit-image
	touch $@

bench-peers: $(PEERS_VENV)/.stepchain-peers
	$(PEERS_VENV)/bin/stepchain bench peers $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info native/*.so .pytest_cache .mypy_cache .ruff_cache
