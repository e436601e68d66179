# make demo  : set up .venv (torch 2.13.0 CPU + this package) and run the main job
# make test  : set up .venv and run the test suite
# make test-capabilities : the op tests again on ATen's default (no SIMD) and AVX2 kernels
# make bench : CPU benchmark of the MI bound (bench/README.md)
# make bench-bounds : the MI bounds on correlated Gaussians (bench/bench_bounds.py; QUICK=1: --quick)
# make wheel : the +cpu wheel (against torch 2.13.0) and the +cu130 wheel (against torch 2.14.1)
#              in dist/, stable ABI, cp310-abi3, manylinux (docs/wheels.md)
# make wheel-cpu : the +cpu wheel alone, manylinux_2_28 like torch's (no CUDA environment needed)
# make wheel-check : install the +cpu wheel into fresh venvs with torch 2.13.0 and 2.14.1 and run
#              the test suite in each with the compiled kernels required
# make abi-check   : the compiled module imports only torch's stable C ABI (no C++ symbols), and
#              the +cpu wheel is manylinux_2_28 (auditwheel; glibc <= 2.28, GLIBCXX <= 3.4.24)
# make cuda-check  : build the CUDA wheel against torch 2.14.1 (CUDA 13); every op has a CUDA kernel
# make source-check: pip install . with build isolation fails fast saying what to run;
#              INFOMAX_EXT_CUDA=OFF builds the CPU kernels against a CUDA torch
# make docs  : the documentation site (mkdocs.yml, docs/) built strict (a warning is an error)
#              into site/
# make typecheck : mypy --strict on python/infomax_ext and docs/examples ([tool.mypy] in
#              pyproject.toml)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_CPU := torch==2.13.0
DEPS_STAMP := $(VENV)/.deps-installed
# The documentation and type-check tools, pinned (a new release may add warnings or errors), installed
# with torch held at the version the venv has: pip never replaces torch for them.
DOCS_TOOLS := mkdocs==1.6.1 mkdocs-material==9.8.2 mkdocstrings==1.0.8 mkdocstrings-python==2.0.11
TYPECHECK_TOOLS := mypy==2.4.1
DOCS_STAMP := $(VENV)/.docs-tools-installed
TYPECHECK_STAMP := $(VENV)/.typecheck-tools-installed
TORCH_PIN := build/torch-pin.txt

# Test-only: torch-mist's estimators, the second oracle of tests/test_bounds.py (skipped without
# it), with the pure-Python packages it imports and pandas (imported by its package); --no-deps
# so that pip never resolves or upgrades torch.
TEST_ONLY_DEPS := torch-mist==0.2.17 pyro-ppl==1.9.2 pyro-api==0.1.2 opt_einsum==3.4.0 \
	pandas==3.1.1 python-dateutil pytz tzdata six

.PHONY: demo test test-capabilities bench bench-bounds wheel wheel-cpu wheel-cuda wheel-check abi-check cuda-check source-check install docs typecheck clean

$(DEPS_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q "scikit-build-core>=0.11" ninja pytest numpy scikit-learn matplotlib tqdm \
	  tensorboard
	$(PIP) install -q --no-deps $(TEST_ONLY_DEPS)
	touch $@

install: $(DEPS_STAMP)
	$(PIP) install -q --no-build-isolation --no-deps -e .

demo: install
	$(PY) -m infomax_ext train --compare-vae

test: install
	$(PY) -m pytest -q

# The fast kernel-vs-reference tests under the kernels an older x86-64 CPU gets, so that their
# float32 tolerances are known to hold on any CPU a wheel meets, not only on this one: ATen's
# default (no SIMD) and AVX2 code paths, with oneDNN and MKL capped to the same generation
# (the native run is `make test`). Each inductor cache is kept apart: its key ignores the
# capability.
OP_TESTS := tests/test_ops.py tests/test_nonfinite.py tests/test_critic_mlp.py tests/test_bernoulli_op.py
test-capabilities: install
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 \
	  TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/build/inductor-default $(PY) -m pytest -q $(OP_TESTS)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
	  TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/build/inductor-avx2 $(PY) -m pytest -q $(OP_TESTS)

$(TORCH_PIN): $(DEPS_STAMP)
	mkdir -p build
	$(PY) -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > $@

$(DOCS_STAMP): $(TORCH_PIN)
	$(PIP) install -q -c $(TORCH_PIN) $(DOCS_TOOLS)
	touch $@

$(TYPECHECK_STAMP): $(TORCH_PIN)
	$(PIP) install -q -c $(TORCH_PIN) $(TYPECHECK_TOOLS)
	touch $@

# The API pages are read from the source by mkdocstrings (nothing is imported), so the docs need
# no build of the extension.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

typecheck: $(TYPECHECK_STAMP)
	$(PY) -m mypy

bench: install
	$(PY) bench/bench_cpu.py

bench-bounds: install
	$(PY) bench/bench_bounds.py $(if $(QUICK),--quick,)

wheel: wheel-cpu wheel-cuda

wheel-cpu: $(DEPS_STAMP)
	bash scripts/build_wheel.sh cpu

wheel-cuda:
	bash scripts/build_wheel.sh cu130

wheel-check: wheel-cpu
	bash scripts/wheel_check.sh

abi-check: wheel-cpu
	bash scripts/abi_check.sh dist/*+cpu-*.whl
	bash scripts/manylinux_check.sh dist/*+cpu-*.whl manylinux_2_28_x86_64

cuda-check: wheel-cuda
	bash scripts/cuda_check.sh

source-check: install wheel-cuda
	bash scripts/source_build_check.sh

clean:
	rm -rf build dist site
