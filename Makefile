# Two commands matter: `make demo` and `make test`. Both build their own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two stamps: `make demo` needs the runtime dependencies only (21 s from a fresh clone, README); the test and
# lint tools (awscli, moto, schemathesis, atheris, mypy...) take minutes and come with `make test` alone.
RUNTIME := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed-dev
# The four source roots that together hold the `gitlab_sts` package (see pyproject.toml).
SRC_ROOTS := cli/src:core/src:service/src:operator/src

.PHONY: demo test lint typecheck unit e2e bench chart-schema clean venv

$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(RUNTIME)
	$(BIN)/gitlab-sts demo

lint: $(STAMP)
	$(BIN)/ruff check .
	# grimp finds namespace-package portions on sys.path only, not through setuptools' editable finder.
	PYTHONPATH=$(SRC_ROOTS) $(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m "not e2e" $(PYTEST_ARGS)

test: lint typecheck unit

e2e: $(STAMP)
	@test -n "$$KUBECONFIG" || (echo "make e2e needs KUBECONFIG pointing at a cluster" && exit 2)
	$(BIN)/pytest -m e2e tests/e2e $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/bench_operator.py 10000

chart-schema: $(STAMP)
	$(BIN)/python tools/values_schema.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
