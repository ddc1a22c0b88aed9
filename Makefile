# Flowscope: `make demo` runs the whole thing locally, `make test` runs the suite.
# Each sets itself up on a fresh machine: a virtualenv in .venv with the pinned dependencies.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Tooling and examples are never installed by the production settings; these targets add them.
DEMO_APPS := tooling,tooling.lab,examples.demo

.PHONY: setup demo test lint reliability bench lab check clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Flowscope needs Python 3.11 or newer; set PYTHON=...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

# BROKER=rabbitmq make demo: on RabbitMQ (CELERY_BROKER_URL's, else the local one, started if none answers).
demo: setup
	DEBUG=$${DEBUG:-1} FLOWSCOPE_EXTRA_APPS=$${FLOWSCOPE_EXTRA_APPS:-$(DEMO_APPS)} FLOWS_MODULES=$${FLOWS_MODULES:-examples.demo.catalog} $(PY) manage.py demo

# The suite on Redis; BROKER=rabbitmq make test runs it on RabbitMQ, in a vhost of its own.
test: setup
	scripts/ensure-chromium
	$(PY) -m pytest --ignore=tests/reliability $(ARGS)

# The linter, the formatter's verdict and the import contracts (pyproject.toml): what CI checks first.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# Faults injected into real processes, and every door tried: RELIABILITY_SIZE=quick for CI,
# BROKER=rabbitmq for RabbitMQ.
reliability: setup
	RELIABILITY_SIZE=$${RELIABILITY_SIZE:-full} $(PY) -m pytest tests/reliability $(ARGS)

# What Flowscope costs against bare Celery and Flower: make bench ARGS="--quick --json bench.json";
# BROKER=rabbitmq make bench ARGS="--quick": on RabbitMQ, in a vhost of the run's own.
bench: setup
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test,bench]'
	DEBUG=$${DEBUG:-1} FLOWSCOPE_EXTRA_APPS=$${FLOWSCOPE_EXTRA_APPS:-tooling} $(PY) manage.py bench $(ARGS)

# Synchronous chain against Flowscope, four scenarios, on embedded defaults: make lab ARGS=--quick
# (BROKER=rabbitmq for RabbitMQ).
lab: setup
	DEBUG=$${DEBUG:-1} FLOWSCOPE_EXTRA_APPS=$${FLOWSCOPE_EXTRA_APPS:-tooling,tooling.lab} $(PY) manage.py lab $(ARGS)

check: setup
	DEBUG=0 SECRET_KEY=check-only-$$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') ALLOWED_HOSTS=flowscope.example.com \
		$(PY) manage.py check --deploy --fail-level WARNING

clean:
	rm -rf $(VENV) var
