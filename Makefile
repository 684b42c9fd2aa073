# Quick start: `make demo` (verify the bundled example, then a tampered copy)
# and `make test` (lint, type-check and the test suite). Each makes its own venv.
PYTHON ?= python3
DEMO_VENV := .venv-demo
TEST_VENV := .venv

.PHONY: demo test lint bench clean

demo: $(DEMO_VENV)/.installed
	examples/demo.sh $(DEMO_VENV)/bin/python

test: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/ruff check .
	$(TEST_VENV)/bin/ruff format --check .
	$(TEST_VENV)/bin/mypy
	# Temporary test folders live in the checkout, not a shared /tmp, so
	# leftovers from other runs on the machine cannot break this one.
	mkdir -p .pytest-tmp
	PYTEST_DEBUG_TEMPROOT=$(CURDIR)/.pytest-tmp $(TEST_VENV)/bin/python -m pytest

bench: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python benchmarks/bench_digests.py
	$(TEST_VENV)/bin/python benchmarks/bench_scan.py

# The demo needs only the core: no numpy, no scikit-learn.
$(DEMO_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(TEST_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

clean:
	rm -rf $(DEMO_VENV) $(TEST_VENV) .mypy_cache .ruff_cache .pytest_cache .pytest-tmp .hypothesis
