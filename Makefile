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
	$(BIN)/moorage serve

test-deps: $(STAMP)
	bash scripts/install-test-deps.sh
	bash scripts/install-kube.sh

# The registry's own test files once more with blobs on S3 (a SeaweedFS the tests start).
S3_TESTS ?= tests/test_api.py tests/test_conformance.py tests/test_clients.py \
	tests/test_bad_input.py tests/test_upload_sessions.py tests/test_signatures.py \
	tests/test_durability.py tests/test_authorization.py tests/test_fuzz.py tests/test_tls.py

test: test-deps lint
	PATH="$(MOORAGE_TOOLS)/bin:$$PATH" $(BIN)/pytest $(PYTEST_ARGS)
	PATH="$(MOORAGE_TOOLS)/bin:$$PATH" MOORAGE_TEST_STORAGE=s3 $(BIN)/pytest $(S3_TESTS)

bench: test-deps
	PATH="$(MOORAGE_TOOLS)/bin:$$PATH" $(BIN)/python bench/run.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) moorage-data .pytest_cache
