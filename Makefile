# The two commands a new user needs: `make demo` and `make test` (both install what is missing).
SHELL := /bin/bash
VENV := .venv
VMHARNESS := $(VENV)/bin/vmharness
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo "sudo -E")
DEMO_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup setup-test demo test test-fast lint bench clean

setup:
	@scripts/setup-host

setup-test:
	@scripts/setup-host --test

## demo: build (once) the Debian 12 image and run the smoke example in a real VM
demo: setup
	$(SUDO) $(VMHARNESS) run examples/smoke.yaml --out $(DEMO_DIR)

## test: the whole suite, real VMs and a real HTCondor pool included
test: setup-test
	$(SUDO) $(VENV)/bin/python -m pytest -ra --timeout=1800 tests

## test-fast: only the tests that boot nothing
test-fast: setup-test
	$(VENV)/bin/python -m pytest -ra -m "not vm and not condor and not browser" tests

lint: setup-test
	$(VENV)/bin/ruff check src tests bench

bench: setup
	$(SUDO) $(VENV)/bin/python bench/bench_trivial_run.py
	$(VENV)/bin/python bench/bench_matrix_expand.py
	$(VENV)/bin/python bench/bench_report.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
