# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(abspath $(VENV))/bin/python
# The CUDA build of torch: it lets the CUDA kernels compile and link even on a machine without a GPU.
TORCH_SPEC ?= torch==2.14.1
export PATH := $(abspath $(VENV))/bin:$(PATH)
export MAX_JOBS ?= 2

CSRC := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh') setup.py
EXT_STAMP := build/.ext-built

.PHONY: install ext demo test test-fast bench bench-kernels info clean lint

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)" ninja setuptools wheel
	FASTMAML_NO_EXT=1 $(PY) -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[dev,triton]"
	touch $@

# The compiled core, rebuilt incrementally (ninja) when a source changes.
$(EXT_STAMP): $(VENV)/.installed $(CSRC)
	$(PY) setup.py -q build_ext --inplace
	mkdir -p build && touch $@

install: $(EXT_STAMP)
ext: $(EXT_STAMP)

demo: $(EXT_STAMP)
	$(PY) -m fastmaml demo

test: $(EXT_STAMP)
	$(PY) -m fastmaml info
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(EXT_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench: $(EXT_STAMP)
	$(PY) -m bench

bench-kernels: $(EXT_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider bench/test_kernels_benchmark.py --benchmark-only

info: $(EXT_STAMP)
	$(PY) -m fastmaml info

# ruff, and the import-linter contract of pyproject.toml (NOTE: [the house]: one way through the layers)
lint: $(VENV)/.installed
	$(PY) -m ruff check fastmaml tests bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf build fastmaml/*.so *.egg-info
