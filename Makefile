# Two commands do everything on a fresh machine:
#   make study   set up, then run the default scaling study (studies/text-default)
#   make test    set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= text-default
OUT    ?= studies/$(CONFIG)
PYTEST_ARGS ?=

.PHONY: setup study test clean-venv

setup: $(VENV)/.installed

# torch first, pinned: a bare `torch` requirement on an empty environment pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

study: setup
	$(BIN)/arscale study run $(CONFIG) --out $(OUT)

# pytest exits 5 when it collects no tests: a broken suite, so it fails here too.
test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); s=$$?; [ $$s -eq 5 ] && echo "no tests collected" >&2; exit $$s

clean-venv:
	rm -rf $(VENV)
