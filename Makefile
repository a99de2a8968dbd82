# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MOORAGE_TOOLS ?= /var/cache/moorage-tools

.PHONY: run test test-deps bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/moorage serve

test-deps: $(STAMP)
	bash scripts/install-test-deps.sh
	bash scripts/install-kube.sh

test: test-deps lint
	PATH="$(MOORAGE_TOOLS)/bin:$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

bench: test-deps
	PATH="$(MOORAGE_TOOLS)/bin:$$PATH" $(BIN)/python bench/run.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) moorage-data .pytest_cache
