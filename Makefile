# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv with the CPU build of torch pinned (a looser pin can pull GBs of CUDA wheels).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
# PyTorch's CPU wheels: PyPI's Linux torch depends on GBs of CUDA wheels. Used where it answers; a
# machine without it (an offline mirror, CI) installs the pin from its configured index.
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

.PHONY: demo test lint venv clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH) $$($(PY) -c "import urllib.request as u; \
		u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=10); print('--index-url $(TORCH_CPU_INDEX)')" \
		2>/dev/null)
	$(BIN)/pip install -q -e ".[dev,tensorboard,hf]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/coordformer demo --out demo_out

test: venv
	$(BIN)/python -m pytest -q

# house rules (issue 17): ruff lint + format at 100 columns, import contracts (pyproject.toml)
lint: venv
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/ruff format --check src tests scripts benchmarks
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) demo_out .pytest_cache
