# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Serving needs the runtime dependencies only; testing adds the test and dev extras.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-test
export MOORAGE_TOOLS ?= /var/cache/moorage-tools

.PHONY: run test test-deps bench lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

run: $(RUN_STAMP)
	$(PYTHON) scripts/check-hosts.py
	$(BIN)/moorage serve

test-deps: $(STAMP)
	bash scripts/install-test-deps.sh
	bash scripts/install-kube.sh

# The suite runs twice: on the embedded defaults (SQLite and files), then with
# every server the tests start on PostgreSQL and S3 (tests/postgres.py and
# tests/seaweed.py start real ones). The replica, database and blob-store
# tests choose their backends themselves, so they run once.
test: test-deps lint
	PATH="$(MOORAGE_TOOLS)/bin:$$PATH" $(BIN)/pytest $(PYTEST_ARGS)
	MOORAGE_TEST_DATABASE=postgres MOORAGE_TEST_STORAGE=s3 \
	  MOORAGE_TEST_ARTIFACTS=$(CURDIR)/test-artifacts/postgres-s3 \
	  PATH="$(MOORAGE_TOOLS)/bin:$$PATH" $(BIN)/pytest \
	  --ignore=tests/test_replicas.py --ignore=tests/test_metadata_databases.py \
	  --ignore=tests/test_storage.py --ignore=tests/test_workers.py $(PYTEST_ARGS)

bench: test-deps
	PATH="$(MOORAGE_TOOLS)/bin:$$PATH" $(BIN)/python bench/run.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) moorage-data .pytest_cache
