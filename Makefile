# Two commands on a fresh machine: `make demo` and `make test` (each creates .venv on first use).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) experiments/tune_iemocap.py

# A time limit that still shows where the time went: SIGINT first (pytest prints its summary and
# durations), a kill a minute later.
TEST_LIMIT ?= 75m
PYTEST := timeout --signal=INT --kill-after=60 $(TEST_LIMIT) $(PY) -m pytest

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PYTEST)

# the edit-run loop: every test that starts no Ray and no job (under a minute)
test-fast: $(STAMP)
	$(PYTEST) -m "not job"

clean:
	rm -rf $(VENV) runs .pytest_cache
