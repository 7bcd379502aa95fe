# The two set-up commands of the README:
#   make serve   install, then run the server on the embedded default model (all-MiniLM-L6-v2)
#   make test    install, then run the test suite
# Both create .venv on first use.
#
# PyTorch is needed to export models (the embedded default's first export included), never to
# serve. It is installed first, as the CPU build TORCH_SPEC: from the indexes pip is set up with
# where they hold it (a mirror, a wheel directory: offline machines), else from TORCH_INDEX,
# PyTorch's CPU wheel index; never the CUDA build plain PyPI resolves `torch` to (~20 nvidia-*
# wheels, several GB). Another build: make serve TORCH_SPEC=torch==2.13.0 (plain PyPI's, CUDA).
PYTHON ?= python3
TORCH_SPEC  ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
VENV   ?= .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

BUILD_INPUTS := pyproject.toml setup.py clients/python/pyproject.toml clients/python/setup.py \
                $(wildcard ext/*.pyx ext/*.pxd proto/ember/v1/*.proto)

.PHONY: serve test lint install install-test clean soak reliability bench gpu-check stubs check-stubs clients clients-toolchain go-toolchain health-probe

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(VENV)/.serve-installed: $(BIN)/python $(BUILD_INPUTS)
	$(BIN)/pip install -q "$(TORCH_SPEC)" 2>/dev/null || \
	  $(BIN)/pip install -q --extra-index-url "$(TORCH_INDEX)" "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ./clients/python -e '.[export,default-model]'
	touch $@
	@echo "ember is installed in $(VENV): run it as $(BIN)/ember (or 'source $(BIN)/activate', then ember)"

$(VENV)/.test-installed: $(VENV)/.serve-installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# ---- the Go and Node clients ----------------------------------------------------------------
# Go builds in GOPATH mode against Debian's packages; Node takes @grpc/grpc-js from npm (the
# versions pinned in clients/node/package-lock.json). Root installs the Debian packages itself;
# anyone else is asked for sudo.
GO_DEBS := golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev \
           golang-github-golang-protobuf-1-5-dev \
           protobuf-compiler
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
GOPATH_CLIENTS := $(CURDIR)/clients/go:/usr/share/gocode
GOENV   := GOPATH=$(GOPATH_CLIENTS) GO111MODULE=off GOCACHE=$(CURDIR)/clients/go/.cache
NODE_DIR := clients/node

# (grpc-go 1.33 decodes through github.com/golang/protobuf: the 1.5 package, which speaks the
# generated APIv2 messages; the 1.3 one panics on them.)
go-toolchain:
	@dpkg -s $(GO_DEBS) >/dev/null 2>&1 || \
	 { $(SUDO) apt-get install -y -q --no-install-recommends $(GO_DEBS) || \
	   { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $(GO_DEBS); }; }

clients-toolchain: go-toolchain $(NODE_DIR)/node_modules/.installed

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Regenerate every committed stub from proto/ (into STUBS_OUT, default: the tree itself).
STUBS_OUT ?= $(CURDIR)
stubs: clients-toolchain
	mkdir -p $(STUBS_OUT)/clients/go/src $(STUBS_OUT)/$(NODE_DIR)/proto $(STUBS_OUT)/$(NODE_DIR)/src/generated
	protoc -I proto --go_out=$(STUBS_OUT)/clients/go/src --go-grpc_out=$(STUBS_OUT)/clients/go/src \
	  proto/ember/v1/ember.proto
	rm -rf $(STUBS_OUT)/$(NODE_DIR)/proto/* $(STUBS_OUT)/$(NODE_DIR)/src/generated/*
	cp -r proto/ember proto/grpc $(STUBS_OUT)/$(NODE_DIR)/proto/
	$(NODE_DIR)/node_modules/.bin/proto-loader-gen-types --keepCase --longs=String --enums=String --defaults \
	  --oneofs --grpcLib=@grpc/grpc-js -I proto --outDir=$(STUBS_OUT)/$(NODE_DIR)/src/generated \
	  ember/v1/ember.proto grpc/health/v1/health.proto

# CI: the committed stubs must be what `make stubs` makes from proto/ now.
check-stubs: clients-toolchain
	rm -rf build/stubs-check && mkdir -p build/stubs-check
	$(MAKE) --no-print-directory stubs STUBS_OUT=$(CURDIR)/build/stubs-check >/dev/null
	@for d in clients/go/src/ember/v1 $(NODE_DIR)/proto $(NODE_DIR)/src/generated; do \
	  diff -r $$d build/stubs-check/$$d >/dev/null || { \
	    echo "stubs in $$d differ from proto/: run 'make stubs' and commit" >&2; diff -ru $$d build/stubs-check/$$d | head -40 >&2; exit 1; }; \
	done; echo "stubs match proto/"

# grpc_health_probe (flags and exit codes of grpc-ecosystem's), built from Debian's grpc-go: the
# Docker image's HEALTHCHECK runs it.
health-probe: go-toolchain
	cd clients/go && $(GOENV) go build -o bin/grpc_health_probe ember/healthprobe

# Build both examples (clients/go/bin/ember-example, clients/node/dist/example.js), the probe and
# the Go latency client of benchmarks/bench.py (clients/go/bin/ember-latency).
clients: clients-toolchain health-probe
	cd clients/go && $(GOENV) go build -o bin/ember-example ember/example
	cd clients/go && $(GOENV) go build -o bin/ember-latency ember/latency
	cd $(NODE_DIR) && node_modules/.bin/tsc -p .

install: $(VENV)/.serve-installed
install-test: $(VENV)/.test-installed

serve: install
	$(BIN)/ember serve $(ARGS)

test: install-test check-stubs clients lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (pinned in the test extra; its rules are in pyproject.toml): pyflakes, pycodestyle, bugbear.
lint: install-test
	$(BIN)/ruff check .

# Mixed traffic against a real server for SOAK_MINUTES (default 30); RSS, fds and threads must
# stay flat. Writes benchmarks/out/soak.md.
SOAK_MINUTES ?= 30
soak: install-test
	$(BIN)/python benchmarks/soak.py --minutes $(SOAK_MINUTES)

# The reliability suite with the long profile: many more fuzz cases, plus the slow tests.
reliability: install-test
	EMBER_FUZZ_EXAMPLES=$${EMBER_FUZZ_EXAMPLES:-2000} $(BIN)/python -m pytest -m '' tests/test_fuzz.py tests/test_reliability.py $(PYTEST_ARGS)

# Everything ember checks on an NVIDIA GPU: the gpu extra, tests/test_gpu.py and a quick
# benchmarks/gpu_bench.py; one JSON and a text summary in benchmarks/out/gpu-check.*.
# GPU_CHECK_ARGS="--providers cpu" is its dry run on any machine (tests/test_gpu_check.py runs it).
gpu-check: install-test
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

bench: install-test
	$(BIN)/python benchmarks/bench.py $(ARGS)

clean:
	rm -rf build $(VENV) server/v1 ext/*.c ext/*.so *.egg-info clients/go/bin clients/go/.cache \
	  $(NODE_DIR)/node_modules $(NODE_DIR)/dist
