# The two commands a new user needs: `make demo` and `make test` (both install what is missing).
SHELL := /bin/bash
VENV := .venv
VMHARNESS := $(VENV)/bin/vmharness
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo "sudo -E")
DEMO_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
PYTEST := $(VENV)/bin/python -m pytest -ra
SLOW_TESTS := -m "vm or condor or browser"
FAST_TESTS := -m "not vm and not condor and not browser"
SCRIPTS := scripts/setup-host scripts/condor-pool .ci/run

.PHONY: setup setup-test demo test test-fast test-slow lint bench clean

setup:
	@scripts/setup-host

setup-test:
	@scripts/setup-host --test

## demo: build (once) the Debian 12 image and run the smoke example in a real VM
demo: setup
	$(SUDO) $(VMHARNESS) run examples/smoke.yaml --out $(DEMO_DIR)

## test: lint and the fast tests first (a mistake shows in a minute), then real VMs, the
## HTCondor pool and the browser
test: setup-test
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory test-fast
	@$(MAKE) --no-print-directory test-slow

## test-fast: only the tests that boot nothing
test-fast: setup-test
	$(PYTEST) $(FAST_TESTS) tests

## test-slow: real VMs (TCG here), a real HTCondor pool, headless Chromium
test-slow: setup-test
	$(SUDO) $(PYTEST) --timeout=1800 $(SLOW_TESTS) tests

## lint: ruff (rules and format), mypy on src, shellcheck on the scripts
lint: setup-test
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	shellcheck -x $(SCRIPTS)

bench: setup
	$(SUDO) $(VENV)/bin/python bench/bench_trivial_run.py
	$(VENV)/bin/python bench/bench_matrix_expand.py
	$(VENV)/bin/python bench/bench_report.py

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
