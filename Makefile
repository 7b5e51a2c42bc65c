# Entry points (see README.md): `make demo`, `make test` (everything), `make test-fast` (the edit loop) and
# `make lint` (ruff + mypy). Each creates .venv on first use; CI (.ci/run) runs `make lint` then `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gencc-installed
OUT    ?= out/demo

.PHONY: demo test test-fast lint install clean

install: $(STAMP)

# torch==2.13.0 is the CPU wheel on this kind of machine's disk; asking pip for it first keeps the
# project's `torch>=` range from pulling a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,dev,diffusers,serve,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gencc demo --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q

# The edit loop: every test not marked slow (slow ones train or compile with TVM). FAST_MARKERS overrides.
FAST_MARKERS ?= not slow
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "$(FAST_MARKERS)"

# Lint and import order over the whole tree, types over the runtime; both configured in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy runtime

clean:
	rm -rf $(VENV) out build *.egg-info

# The sample-quality study (docs/QUALITY.md); needs the demo's models: `make demo && make quality`.
.PHONY: quality
quality: $(STAMP)
	$(PY) scripts/quality_study.py --demo-dir $(OUT) --out docs
