# SLM Lab — two commands: `make lab` (set up .venv, start JupyterLab) and `make test` (set up, run all tests).
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
# torch first, pinned to a build that exists on the course machines; every other requirement is a range
# that this build satisfies, so pip never pulls a second (multi-GB) torch.
TORCH_SPEC ?= torch==2.13.0
STAMP      := $(VENV)/.slm-lab-installed
# JupyterLab refuses to run as root unless told to.
ROOT_FLAG  := $(shell [ "$$(id -u)" = "0" ] && echo --allow-root)
PORT       ?= 8888
PYTEST_ARGS ?=

.PHONY: lab test test-colab lint setup doctor labs slides clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 13) else "SLM Lab needs Python 3.10-3.13, found %d.%d: run make with PYTHON=python3.12 (or use environment.yml)" % v)'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# The kernel lives inside this clone's .venv (not one per-user entry that every clone overwrites);
	@# the JupyterLab started from .venv finds it first.
	$(BIN)/python -m ipykernel install --sys-prefix --name slm-lab --display-name "SLM Lab ($(CURDIR))" >/dev/null
	@$(BIN)/python -m slm_lab.course.kernel remove-legacy
	@# `slm-lab grade` runs each submission in a bubblewrap sandbox; as root on Debian/Ubuntu, install it.
	@command -v bwrap >/dev/null 2>&1 || ! [ "$$(id -u)" = 0 ] || ! command -v apt-get >/dev/null 2>&1 || \
		apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; } || true
	@command -v bwrap >/dev/null 2>&1 || echo "note: bubblewrap is not installed, so slm-lab grade needs --no-sandbox (INSTRUCTORS.md)"
	@touch $@
	@echo "SLM Lab environment ready in $(VENV)"

lab: $(STAMP)
	$(BIN)/jupyter lab $(ROOT_FLAG) --port=$(PORT) --ServerApp.root_dir="$(CURDIR)" README.md

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every lecture and solved lab the way Colab runs them: a fresh environment with Colab's ipywidgets 7.7 and a
# kept torch, the package installed by the setup cell, each notebook alone in an empty folder (tests/test_colab.py;
# `make test` runs a subset of four).
test-colab: $(STAMP)
	SLM_LAB_COLAB_ALL=1 $(BIN)/python -m pytest tests/test_colab.py $(PYTEST_ARGS)

# The same two checks tests/test_lint.py runs inside `make test`; rules and options live in pyproject.toml.
lint: $(STAMP)
	$(BIN)/python -m ruff check slm_lab
	$(BIN)/python -m mypy

doctor: $(STAMP)
	$(BIN)/slm-lab doctor

labs: $(STAMP)
	$(BIN)/slm-lab make-labs

slides: $(STAMP)
	$(BIN)/slm-lab slides

clean:
	@test ! -x $(BIN)/python || $(BIN)/python -m slm_lab.course.kernel remove-legacy
	rm -rf $(VENV) build slides/_build .pytest_cache
