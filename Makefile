# `make test` builds .venv from requirements.txt and requirements-test.txt (once) and runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test venv demo bench clean mutants

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The test extra (pytest, the prdc reference, Triton for the fused-op checks under its interpreter).
$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.test-installed
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q tests

# Mutation testing (not in CI: tens of minutes): kill rate per module of bench/mutants.py.
# MUTANTS_ARGS, e.g. "--module training/loss.py --max 20".
mutants: $(VENV)/.test-installed
	OMP_NUM_THREADS=1 $(PY) bench/mutants.py $(MUTANTS_ARGS)

# The built-in pipeline: prune -> fine-tune with and without SVS -> evaluate -> runs/pipeline/report.html.
demo: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache
