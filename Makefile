# Two commands do all the set-up: `make demo` and `make test` (each creates the environment first if missing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# checkov (infra checks) pins its own botocore: it lives in a venv of its own, never in the runtime dependencies.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo demo-cluster demo-transfer test env clean

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt pipeline/_jpegwindow.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

$(CHECKOV_STAMP): infra/requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q -r infra/requirements-checkov.txt
	touch $@

demo: $(STAMP)
	$(PY) -m demo

# The same job as a cluster user runs it, on one machine: loopback S3, a Ray head, an MLflow server, ray job submit.
demo-cluster: $(STAMP)
	$(PY) -m demo --cluster

# Appendix B in small: a net trained on digits 0-4, its features used on digits 5-9 (linear SVMs, fine-tuning).
demo-transfer: $(STAMP)
	$(PY) -m demo.transfer

test: $(STAMP) $(CHECKOV_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache *.egg-info
