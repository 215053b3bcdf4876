# Two entry points that work on a fresh machine (Debian/Ubuntu, Python 3.10+):
#   make demo    set up, then run a whole federation on this machine
#   make test    set up (incl. apt packages the tests need), then run the test suite
# FACES is any folder of faces with one sub-folder per person.
FACES ?= ../shared/data/lfw
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup setup-test demo test lint bench clean

setup: $(VENV)/.fedface-installed

$(VENV)/.fedface-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip >/dev/null
	# torch first, pinned: the CPU build (an unpinned resolve would pull CUDA wheels)
	$(PIP) install 'torch==2.13.0'
	$(PIP) install -e '.[edge,train,demo,dev]'
	$(VENV)/bin/fedface-edge models fetch
	touch $@

# System packages the tests use: a real Mosquitto broker (the tests start their own
# on a free port), shellcheck, systemd-analyze, Chromium for the kiosk page tests.
setup-test: setup
	bash firmware_scripts/dev/install-test-deps.sh

# FACES reaches the recipe through its environment, taken as typed ($(value): no make
# expansion of a $ in it), so a path with quotes, spaces or $ in it is one argument
# ('$(FACES)' in the recipe broke on "St Mary's staff")
demo: export FEDFACE_DEMO_FACES := $(value FACES)
demo: setup
	$(VENV)/bin/fedface-edge demo --faces "$$FEDFACE_DEMO_FACES"

test: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q --durations=10 -n 2 --dist loadfile

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
