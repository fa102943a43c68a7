# One loop for people and CI: make run, make test, make lint, make bench.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
MODELS  ?= models
# Two install stamps: what running needs (make run), then the test, lint and benchmark tools.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
CHROMIUM  := /usr/bin/chromium

.PHONY: run test lint bench models clean

$(BIN)/python:
	@echo "==> [1/3] creating the virtual environment $(VENV)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The API, the workers and their model stack (torch, transformers, ONNX Runtime, scikit-learn):
# ~1.5 GB, the longest step of a first `make run` (see README, "Quick start"). pip lists each
# package as it goes.
$(RUN_STAMP): $(BIN)/python requirements.txt requirements-worker.txt pyproject.toml
	@echo "==> [2/3] installing what nearline runs on (requirements-worker.txt: torch, transformers, onnxruntime, ...)"
	$(BIN)/pip install -r requirements-worker.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(RUN_STAMP)

# Tests, lint and benchmarks (make test, make lint, make bench) add their own tools.
$(DEV_STAMP): $(RUN_STAMP) requirements-dev.txt
	@echo "==> installing the test, lint and benchmark tools (requirements-dev.txt)"
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(DEV_STAMP)

# The example model repository (digits + MiniLM + topics head), built once, reproducibly.
$(MODELS)/.built: $(RUN_STAMP)
	@echo "==> [3/3] building the example models into $(MODELS)/ (digits, MiniLM, topics: see docs/models.md)"
	$(BIN)/nearline models build --out $(MODELS)
	touch $(MODELS)/.built

# Debian's Chromium for the browser tests (tests/test_first_hour.py, tests/test_docs_pages.py):
# installed only when it is missing.
$(CHROMIUM):
	@echo "==> installing Chromium (Debian's package) for the browser tests"
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium'

models: $(MODELS)/.built

# Azurite, the Azure Storage emulator (npm), for the Blob Storage tests: installed once per
# version under .tools/; the tests start their own on a free loopback port.
AZURITE_VERSION := 3.37.0
AZURITE := .tools/.azurite-$(AZURITE_VERSION)
$(AZURITE):
	npm install --prefix .tools --no-audit --no-fund --silent azurite@$(AZURITE_VERSION)
	touch $(AZURITE)

run: $(MODELS)/.built
	@echo "==> nearline is $(BIN)/nearline; to type just nearline: export PATH=\"$(CURDIR)/$(BIN):\$$PATH\""
	$(BIN)/nearline serve --models $(MODELS)

test: $(DEV_STAMP) $(MODELS)/.built $(AZURITE) $(CHROMIUM)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(DEV_STAMP) $(MODELS)/.built
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(MODELS) .pytest_cache .mypy_cache .ruff_cache
