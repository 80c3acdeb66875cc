# `make test` and `make demo` create the virtual environment on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test browser demo demo-features bench gpu-wheels clean-venv

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# What only the tests and the linters use (pytest, ruff, playwright), on top of requirements.txt.
$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# What a contributor runs: lint and format check (configured in pyproject.toml), the unit tests and the one
# end-to-end run kept from the slow tier (`core`: all three stages plus eval on the digits). About 5 minutes on
# 2 CPU cores; docs/testing.md has the figures.
test: $(VENV)/.installed-dev browser
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -m "not slow or core"

# What CI runs (.ci/run): `make test`, then the rest of the slow tier (torchrun, fault injection, study benches,
# the other end-to-end runs), with the 15 slowest tests listed.
.PHONY: test-all
test-all: test
	$(PY) -m pytest -q -m "slow and not core" --durations=15

# report.html's test opens the page in a real browser: Debian's chromium, installed when missing and possible
# (as root with apt, announced first; SKIP_BROWSER=1 skips it); otherwise that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null \
	  || test -n "$(SKIP_BROWSER)" \
	  || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null \
	       && echo "Installing Chromium with apt-get for the report's browser test (SKIP_BROWSER=1 skips this)" \
	       && apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
	  || echo "note: no Chromium could be installed; the report's browser test will be skipped"

# The whole method on scikit-learn's bundled digits, CPU only (about 500 s of CPU time, 2 torch threads; see
# bench/RESULTS.md); it ends by naming report.html and the command that opens it.
demo: $(VENV)/.installed
	$(PY) bench/digits_demo.py --seeds 0 --output_dir results/digits_demo

# SCAN heads on cached features of the demo's pretext model (reused from `make demo` when it ran), and with
# WEIGHTS=path/to/weights.pth (BACKBONE=torchvision:resnet18 by default, or e.g. timm:resnet50) from that model.
demo-features: $(VENV)/.installed
	$(PY) bench/digits_features_demo.py --output_dir results/digits_features \
		$(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(BACKBONE),--backbone $(BACKBONE))

bench: $(VENV)/.installed
	$(PY) bench/digits_demo.py --seeds 0 1 2 --output_dir results/digits_bench

# Wheels for a GPU machine without internet (bench/gpu_check.sh installs those it lacks): into .whl/, with the size.
gpu-wheels:
	bash bench/gpu_wheels.sh

clean-venv:
	rm -rf $(VENV)
