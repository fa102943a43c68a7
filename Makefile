# One loop for people and CI: make run, make test, make lint, make bench.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
MODELS  ?= models
STAMP   := $(VENV)/.installed

.PHONY: run test lint bench models clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python requirements.txt requirements-worker.txt requirements-dev.txt pyproject.toml
	$(BIN)/pip install --quiet -r requirements-worker.txt -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The example model repository (digits + MiniLM + topics head), built once, reproducibly.
$(MODELS)/.built: $(STAMP)
	$(BIN)/nearline models build --out $(MODELS)
	touch $(MODELS)/.built

models: $(MODELS)/.built

run: $(MODELS)/.built
	$(BIN)/nearline serve --models $(MODELS)

test: $(MODELS)/.built
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(MODELS)/.built
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(MODELS) .pytest_cache .mypy_cache .ruff_cache
