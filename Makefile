# One command sets everything up and runs the main job; one sets up and runs the tests.
#   make demo   -> creates .venv (torch==2.13.0 CPU build + smoothguard), runs `smoothguard demo`
#   make test   -> creates .venv, installs the test extras, runs pytest
# Make is used because it is on every machine of this kind, needs no bootstrap of its own,
# and rebuilds .venv only when it is missing or pyproject.toml changed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.smoothguard-installed

.PHONY: demo test setup bench mutation clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch pinned to the CPU build on this machine's disk; an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/smoothguard demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_certify.py

# Mutation testing of the critical modules (not part of `make test` or CI: ~10 min of CPU).
# Runs in throwaway copies under /tmp; never touches the repository. TARGETS="stats core" limits it.
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet 'mutmut==3.8.1'
	$(BIN)/python scripts/mutation.py $(TARGETS)

clean:
	rm -rf $(VENV) smoothguard-demo build *.egg-info
