# `make test` and `make demo` create the virtual environment on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test demo bench clean-venv

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The CI suite: lint and format check (configured in pyproject.toml), then unit tests plus the
# end-to-end runs (CPU, a few minutes).
test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

# The whole method on scikit-learn's bundled digits, CPU only (about 7 minutes on 2 cores); see bench/RESULTS.md.
demo: $(VENV)/.installed
	$(PY) bench/digits_demo.py --seeds 0 --output_dir results/digits_demo

bench: $(VENV)/.installed
	$(PY) bench/digits_demo.py --seeds 0 1 2 --output_dir results/digits_bench

clean-venv:
	rm -rf $(VENV)
