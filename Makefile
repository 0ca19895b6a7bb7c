# `make demo` and `make test` work on a fresh machine with only Python 3.11:
# they create .venv and install the pinned versions from constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PEER := build/peer
PEER_STAMP := $(PEER)/.unpacked

.PHONY: setup demo test bench clean

setup: $(STAMP) $(PEER_STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# py-consul's own tests, which tests/peer runs against our Name Server: its source distribution,
# fetched once, only if its sha256 is the one pinned in tests/peer/py-consul.txt, and unpacked.
$(PEER_STAMP): tests/peer/py-consul.txt | $(STAMP)
	rm -rf $(PEER)
	mkdir -p $(PEER)
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: --require-hashes \
		-r tests/peer/py-consul.txt -d $(PEER)
	tar -xzf $(PEER)/py_consul-*.tar.gz -C $(PEER)
	touch $(PEER_STAMP)

demo: $(STAMP)
	$(BIN)/python -m oneos.demo

# Four test processes (pytest-xdist), each module's tests in one of them, so that one's
# real-time waits (session TTLs) overlap the others' work: on two CPUs the extra processes
# fill the time the others spend waiting (tests/conftest.py hands out the longest modules
# first). `make test XDIST=` runs them in this process. The ten slowest tests are printed at the end.
XDIST ?= -n 4 --dist loadfile
# Whatever happens, the run ends: after 15 minutes pytest gets SIGINT (it prints what ran).
# Bytecode is kept (PYTHONDONTWRITEBYTECODE unset, OneOS compiled first): the tests start
# hundreds of OneOS processes and each pytest worker collects every test module, and without
# it each would compile them again (0.1 s of CPU per process start, 3 s per worker).
test: $(STAMP) $(PEER_STAMP)
	$(BIN)/python -m compileall -q oneos
	timeout --signal=INT --kill-after=60 900 env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest $(XDIST) --durations=10 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/pipes.py
	$(BIN)/python bench/control.py
	$(BIN)/python bench/nameserver.py

clean:
	rm -rf $(VENV) build *.egg-info
