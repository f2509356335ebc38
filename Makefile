# Single entry point: every target creates .venv/ first when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch first and pinned: any other spec lets pip pull a multi-GB CUDA build here.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# the interpreter set-up builds on: the venv's when it runs, else $(PYTHON)
BASE   := $(shell test -x $(PY) && echo $(PY) || echo $(PYTHON))
# test processes (pytest-xdist): most tests wait on subprocesses, imports and files, so two
# share the CI machine's two cores well
TEST_WORKERS ?= 2

.PHONY: setup demo test test-fast bench browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(BASE) >/dev/null 2>&1 || { echo "$(BASE): no such Python interpreter; give one with make PYTHON=python3.11 (or newer)" >&2; exit 1; }
	@$(BASE) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "timnet needs Python >= 3.11; $(BASE) is $$($(BASE) -V 2>&1): make clean, then make PYTHON=python3.11 (or newer)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)  ## predict the bundled example clips with the bundled EMODB model
	$(VENV)/bin/timnet predict examples/

test: $(STAMP) browser  ## the whole suite: fast tier and the real-data tier on ../shared
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# Debian's chromium for the report's browser test; where it cannot be installed (no root, not
# Debian) the test skips and says so, except under CI, where it must run.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium could not be installed: the browser test will be skipped outside CI"

test-fast: $(STAMP)  ## synthetic data only (seconds)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not realdata and not slow"

bench: $(STAMP)  ## speed figures of this machine (training, inference, extraction of ../shared EMODB)
	$(VENV)/bin/timnet bench --data ../shared/data/EMODB --json bench.json

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
