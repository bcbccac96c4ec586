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

.PHONY: install ext demo test test-fast test-torch-low bench bench-kernels info clean lint docs

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
	$(MAKE) --no-print-directory test-torch-low

# The low end of the declared torch range (pyproject.toml: torch>=2.11, the GPU machine's torch):
# a second venv with that torch builds the extension (CPU kernels: `make test` proves the CUDA ones
# compile against TORCH_SPEC) in a copy of the sources and runs a representative part of the suite:
# the fused update's autograd and backends, the chain ops, the task-batched mode, MAML, the buffer
# rule, the compiled step's Inductor graph pass, the batched layers' hand-written second derivatives,
# and every Triton launch compiled for sm_90 by the device's Triton (3.6, torch 2.11's). The venv and
# the wheels (~4.8 GB with torch's CUDA libraries) live under ~/.cache/fastmaml and are kept between
# runs (and clean clones) on a machine: pip's own cache does not keep them here.
TORCH_LOW_SPEC ?= torch==2.11.*
LOW := build/torch-low
LOW_VENV ?= $(HOME)/.cache/fastmaml/venv-torch-low
LOW_PY := $(LOW_VENV)/bin/python
LOW_WHEELS ?= $(HOME)/.cache/fastmaml/wheels-torch-low
LOW_REQS := "$(TORCH_LOW_SPEC)" ninja "setuptools>=77" wheel numpy tqdm matplotlib pytest hypothesis
LOW_TESTS := tests/ops/test_update_autograd.py tests/ops/test_update_backends.py tests/ops/test_chain_ops.py \
	tests/test_batched.py tests/test_batched_mlp.py tests/test_maml.py tests/test_buffers.py \
	tests/execution/test_graph_passes.py tests/ops/test_triton_compiles.py tests/execution/test_batched_conv.py \
	tests/execution/test_batched_norm.py tests/execution/test_compiled_cuda_graphs.py
test-torch-low:
	test -x $(LOW_PY) || $(PYTHON) -m venv $(LOW_VENV)
	$(LOW_PY) -c "import torch, sys; sys.exit(not torch.__version__.startswith('2.11.'))" 2>/dev/null \
	  || $(LOW_PY) -m pip install -q --disable-pip-version-check --no-index --find-links $(LOW_WHEELS) $(LOW_REQS) 2>/dev/null \
	  || { $(LOW_PY) -m pip download -q --disable-pip-version-check -d $(LOW_WHEELS) $(LOW_REQS) \
	       && $(LOW_PY) -m pip install -q --disable-pip-version-check --no-index --find-links $(LOW_WHEELS) $(LOW_REQS); }
	mkdir -p $(LOW)/src
	tar -cf - --exclude='*.so' --exclude=__pycache__ fastmaml csrc tests bench docs setup.py pyproject.toml README.md | tar -xf - -C $(LOW)/src
	cd $(LOW)/src && FASTMAML_NO_CUDA=1 FASTMAML_REQUIRE_CUDA=0 $(LOW_PY) setup.py -q build_ext --inplace
	cd $(LOW)/src && $(LOW_PY) -m fastmaml info && $(LOW_PY) -m pytest -q -p no:cacheprovider $(LOW_TESTS)

test-fast: $(EXT_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench: $(EXT_STAMP)
	$(PY) -m bench

bench-kernels: $(EXT_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider bench/test_kernels_benchmark.py --benchmark-only

info: $(EXT_STAMP)
	$(PY) -m fastmaml info

# ruff, the import-linter contract of pyproject.toml (NOTE: [the house]: one way through the layers),
# and mypy over fastmaml/ ([tool.mypy] in pyproject.toml; its cache in build/mypy)
lint: $(VENV)/.installed
	$(PY) -m ruff check fastmaml tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

# The API reference (docs/api/, Sphinx autodoc + napoleon) into build/docs/index.html; any warning
# fails it. tests/test_api_docs.py builds it too, so `make test` keeps it true.
docs: $(VENV)/.installed
	$(PY) -m sphinx -b html -E -W --keep-going -q docs/api build/docs

clean:
	rm -rf build fastmaml/*.so *.egg-info
