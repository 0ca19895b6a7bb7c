# `make demo` and `make test` work on a fresh machine with only Python 3.11:
# they create .venv and install the pinned versions from constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m oneos.demo

# Three test processes (pytest-xdist), each module's tests in one of them, so that one's
# real-time waits (session TTLs) overlap the others' work: on two CPUs a third process
# fills the time the other two spend waiting. `make test XDIST=` runs them in this
# process. The ten slowest tests are printed at the end.
XDIST ?= -n 3 --dist loadfile
test: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) --durations=10 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/pipes.py
	$(BIN)/python bench/control.py

clean:
	rm -rf $(VENV) build *.egg-info
