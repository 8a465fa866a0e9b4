# One entry point for people and CI.
#   make up      install if needed, then start everything that is built (official weights required)
#   make demo    the same on synthetic weights of the reduced architecture (labelled as such everywhere)
#   make test    lint, type-check and the whole test suite (what CI runs)
#   make install TORCH=cpu   on a host without a GPU: PyTorch's CPU build instead of PyPI's CUDA build
#   make agents  the voice-agent frameworks' own environment (.venv-agents: Pipecat, LiveKit Agents)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= serve,export,embedded,test
# TORCH=cpu takes PyTorch's CPU build from PyTorch's own index (PyPI's torch for Linux is the CUDA build,
# ≈ 2.5 GB more); serving alone (EXTRAS=serve) needs no torch at all.
TORCH ?=
TORCH_INDEX_ARG := $(if $(filter cpu,$(TORCH)),--extra-index-url https://download.pytorch.org/whl/cpu,)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# The agent frameworks' environment (Pipecat, LiveKit Agents): their pins differ from the gateway's.
AGENTS_VENV ?= .venv-agents
AGENTS_STAMP := $(AGENTS_VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install agents up demo test lint typecheck pytest clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_INDEX_ARG) -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.installed-*
	@touch $@

agents: $(AGENTS_STAMP)

$(AGENTS_STAMP): pyproject.toml
	@test -x $(AGENTS_VENV)/bin/python || $(PYTHON) -m venv $(AGENTS_VENV)
	$(AGENTS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AGENTS_VENV)/bin/python -m pip install --quiet -e ".[pipecat,livekit]" pytest
	@rm -f $(AGENTS_VENV)/.installed-*
	@touch $@

up: install
	$(PY) -m gateway up

demo: install
	$(PY) -m gateway up --demo

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: install
	$(PY) -m mypy

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
pytest: install agents
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test: lint typecheck pytest

clean:
	rm -rf $(VENV) $(AGENTS_VENV) artifacts .pytest_cache .mypy_cache .ruff_cache
