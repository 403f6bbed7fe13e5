# Every target CI uses is here, so local runs and CI run the same commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_HOME ?= $(CURDIR)/.shipyard-run
RUN_PORT ?= 8000
RUN_MODELS ?= iris@production digits@production digits-onnx digits-torch breast-cancer@production minilm@production
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test check lint typecheck install install-dev clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[examples]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,examples]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## make run: install, push the example models into a fresh registry, list them and serve them.
run: install
	rm -rf $(RUN_HOME)
	SHIPYARD_HOME=$(RUN_HOME) HF_HUB_OFFLINE=1 $(BIN)/python examples/push_examples.py
	SHIPYARD_HOME=$(RUN_HOME) $(BIN)/shipyard list
	SHIPYARD_HOME=$(RUN_HOME) HF_HUB_OFFLINE=1 $(BIN)/shipyard serve $(RUN_MODELS) --port $(RUN_PORT)

## make test: install everything the tests need and run the whole suite.
test: install-dev
	bash scripts/install-debian-tool.sh chromium
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports

typecheck: install-dev
	$(BIN)/mypy

check: lint typecheck test

bench: install-dev
	bash scripts/install-debian-tool.sh wrk --required
	$(BIN)/python benchmarks/registry.py
	$(BIN)/python benchmarks/optimize.py
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf $(VENV) $(RUN_HOME) .pytest_cache .mypy_cache .ruff_cache
