# see-dml: every target creates .venv and installs the package itself when needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# This machine's torch / torchvision pair (and nothing else): passed to every pip install here
# and in CI. The package itself declares lower bounds only (pyproject.toml).
CONSTRAINTS := constraints.txt
PIP     = -m pip install -q -c $(CONSTRAINTS)
# The floors run: every direct dependency at its declared lower bound, in a venv of its own
FLOORS_VENV ?= .venv-floors
FLOORS_PY   := $(FLOORS_VENV)/bin/python
FLOORS_TESTS ?= tests/test_train.py tests/test_evaluate.py tests/metrics tests/synthesis \
	tests/losses tests/test_extras.py
# The newest run: the newest release of every dependency but torch / torchvision
NEWEST_VENV ?= .venv-newest
NEWEST_PY   := $(NEWEST_VENV)/bin/python

.PHONY: install train paper test test-slow test-all lint format clean help test-floors \
	test-newest check-install

help:
	@echo "make train     train on the embedded Double-MNIST (CPU, a few minutes); ARGS='k=v ...'"
	@echo "make paper TABLE=vit128  one paper table on SLURM (resnet50 | vit128 | vit384; experiments/README.md)"
	@echo "make test      the test suite (fast tests, a few minutes)"
	@echo "make test-slow the slow end-to-end tests alone (CI runs both); make test-all: both"
	@echo "make lint      ruff, the import layering (lint-imports) and mypy on src/see_dml (pyproject.toml)"
	@echo "make test-floors  the core tests with every dependency at its declared floor (CI runs it)"
	@echo "make test-newest  the test suite with the newest release of every dependency but torch"
	@echo "make check-install  the wheel and sdist: LICENSE, extras, a user's own torch kept"

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the constrained torch pair first: it comes from the machine's cache, not a download
	$(PY) $(PIP) torch torchvision
	# every extra: the tests exercise each optional part
	$(PY) $(PIP) -e '.[all,dev]'
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

# Lower bounds, proved: a venv with each direct dependency at its floor (.ci/floors.py) and
# torch / torchvision at this machine's pair, no extras; the core of the suite there,
# including the one-line errors for the missing extras.
$(FLOORS_VENV)/.installed: pyproject.toml $(CONSTRAINTS) .ci/floors.py
	test -x $(FLOORS_PY) || $(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_PY) -m pip install -q --upgrade pip
	$(PYTHON) .ci/floors.py > $(FLOORS_VENV)/floors.txt
	$(FLOORS_PY) $(PIP) torch torchvision
	$(FLOORS_PY) $(PIP) -c $(FLOORS_VENV)/floors.txt -e '.[dev]'
	touch $@

test-floors: $(FLOORS_VENV)/.installed
	$(PYTHON) .ci/floors.py --verify $(FLOORS_PY)
	$(FLOORS_PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile $(FLOORS_TESTS) $(ARGS)

# Newest releases of everything but torch / torchvision (kept at this machine's pair): run
# before each release; the last log is .ci/compat/newest.log
test-newest:
	test -x $(NEWEST_PY) || $(PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_PY) -m pip install -q --upgrade pip
	$(NEWEST_PY) $(PIP) torch torchvision
	$(NEWEST_PY) $(PIP) --upgrade --upgrade-strategy eager -e '.[all,dev]'
	$(NEWEST_PY) -m pip list --format=freeze
	$(NEWEST_PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile $(ARGS)

# The package as others install it (.ci/check_install.sh): wheel and sdist hold LICENSE and
# the configs; a venv with another torch / torchvision keeps them; the default install has
# no optional package and each extra brings its own.
check-install: $(STAMP)
	bash .ci/check_install.sh $(PY)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks experiments

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache dist
