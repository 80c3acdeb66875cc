# `make test` and `make demo` create the virtual environment on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test browser demo demo-features bench clean-venv

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# What a contributor runs: lint and format check (configured in pyproject.toml), the unit tests and the one
# end-to-end run kept from the slow tier (`core`: all three stages plus eval on the digits). About 5 minutes on
# 2 CPU cores; docs/testing.md has the figures.
test: $(VENV)/.installed browser
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -m "not slow or core"

# What CI runs (.ci/run): `make test`, then the rest of the slow tier (torchrun, fault injection, study benches,
# the other end-to-end runs), with the 15 slowest tests listed.
.PHONY: test-all
test-all: test
	$(PY) -m pytest -q -m "slow and not core" --durations=15

# report.html's test opens the page in a real browser: Debian's chromium, installed when missing and possible
# (as root with apt); otherwise that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null \
	  || { test "$$(id -u)" = 0 && apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
	  || echo "note: no Chromium could be installed; the report's browser test will be skipped"

# The whole method on scikit-learn's bundled digits, CPU only (about 7 minutes on 2 cores); see bench/RESULTS.md.
demo: $(VENV)/.installed
	$(PY) bench/digits_demo.py --seeds 0 --output_dir results/digits_demo

# SCAN heads on cached features of the demo's pretext model (reused from `make demo` when it ran), and with
# WEIGHTS=path/to/weights.pth (BACKBONE=torchvision:resnet18 by default, or e.g. timm:resnet50) from that model.
demo-features: $(VENV)/.installed
	$(PY) bench/digits_features_demo.py --output_dir results/digits_features \
		$(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(BACKBONE),--backbone $(BACKBONE))

bench: $(VENV)/.installed
	$(PY) bench/digits_demo.py --seeds 0 1 2 --output_dir results/digits_bench

clean-venv:
	rm -rf $(VENV)
