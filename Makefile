# Two commands do everything on a fresh machine:
#   make study   set up, then run the default scaling study (studies/text-default)
#   make test    set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= text-default
OUT    ?= studies/$(CONFIG)
PYTEST_ARGS ?=
# tests side by side (pytest-xdist) when above 0; tests/support/exclusive.py says which run alone. 0 by default:
# on 2 cores, 2 side by side took 43m22s against 46m20s, and a fault test's timing broke under the load
TEST_WORKERS ?= 0
BENCH_ARGS ?=
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=

.PHONY: setup study test bench gpu-check gpu-wheels clean-venv fashion-mnist debian-text chromium

setup: $(VENV)/.installed fashion-mnist debian-text chromium

# torch first, pinned: a bare `torch` requirement on an empty environment pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

# Image studies use Fashion-MNIST from Debian's dataset-fashion-mnist where it can be installed (root and apt);
# elsewhere they fall back to scikit-learn's bundled digits and say so.
fashion-mnist:
	@[ -d /usr/share/datasets/fashion-mnist ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "note: Fashion-MNIST not installed (needs root: apt-get install dataset-fashion-mnist); image studies use scikit-learn's digits"

# The tests open each report's report.html in a real headless Chromium, Debian's chromium where it can be installed
# (root and apt); elsewhere those tests are skipped and say how to install it.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "note: Chromium not installed (needs root: apt-get install chromium); the report.html browser tests are skipped"

# Tests and the tokenization benchmark also use real English text, GCIDE (40 MB), from Debian's dict-gcide where apt
# can fetch it. The package is unpacked into data/debian rather than installed: installing it would start a dict server.
GCIDE := data/debian/usr/share/dictd/gcide.dict.dz
debian-text:
	@[ -f $(GCIDE) ] || { command -v apt-get >/dev/null && d=$$(mktemp -d) && \
	  (cd $$d && apt-get download -q dict-gcide >/dev/null 2>&1) && mkdir -p data/debian && \
	  dpkg -x $$d/dict-gcide_*.deb data/debian 2>/dev/null; \
	  rm -rf "$$d"; [ -f $(GCIDE) ]; } || \
	  echo "note: Debian's dict-gcide could not be fetched; tests and benchmarks use the Python sources alone"

study: setup
	$(BIN)/arscale study run $(CONFIG) --out $(OUT)

# pytest exits 5 when it collects no tests: a broken suite, so it fails here too.
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS); s=$$?; [ $$s -eq 5 ] && echo "no tests collected" >&2; exit $$s

# Every benchmark, one table (bench/results.md, also logged to MLflow); see bench/README.md. 35–80 minutes on 2 cores.
bench: setup
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

# The GPU acceptance check (bench/gpu_check.py; results in bench/results-gpu.md): arscale's training loop on this
# machine's GPU, no Ray or MLflow, under 8 minutes. Runs with the machine's own python3 (torch with CUDA, numpy,
# pyarrow, tokenizers, safetensors); DeepSpeed and its dependencies come from build/gpu-wheels/ if it lacks them.
gpu-check:
	$(GPU_PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

# Those wheels (CPython 3.12, manylinux x86_64; ~6 MB), made where PyPI is reachable: copy build/gpu-wheels/ along.
gpu-wheels: $(VENV)/.installed
	PYTHON=$(BIN)/python bench/gpu_wheels.sh build/gpu-wheels

clean-venv:
	rm -rf $(VENV)
