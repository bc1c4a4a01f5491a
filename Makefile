# see-dml: every target creates .venv and installs the package itself when needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install train paper test test-slow test-all lint format clean help

help:
	@echo "make train     train on the embedded Double-MNIST (CPU, a few minutes); ARGS='k=v ...'"
	@echo "make paper TABLE=vit128  one paper table on SLURM (resnet50 | vit128 | vit384; experiments/README.md)"
	@echo "make test      the test suite (fast tests, a few minutes)"
	@echo "make test-slow the slow end-to-end tests alone (CI runs both); make test-all: both"
	@echo "make lint      ruff, the import layering (lint-imports) and mypy on src/see_dml (pyproject.toml)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the exact torch pins first: they come from the machine's cache, not a multi-GB download
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m see_dml.train loss=proxy_anchor see.enabled=true $(ARGS)

# one table of the paper: every setting x SEE off/on x 3 seeds, as SLURM jobs; ARGS adds
# overrides (e.g. paths.data_dir=...)
paper: $(STAMP)
	@test -f "conf/experiment/paper/table_$(TABLE).yaml" || { echo "make paper TABLE=<name>: one of $$(cd conf/experiment/paper && ls table_*.yaml | sed 's/table_//; s/.yaml//' | tr '\n' ' ')"; exit 2; }
	$(PY) -m see_dml.train -m experiment=paper/table_$(TABLE) hydra/launcher=slurm $(ARGS)

# one worker per core (pytest-xdist); a file's tests stay on one worker, so its module
# fixtures train once
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks experiments

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
