# finetune-operator: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(abspath .)
VENV = $(shell bash hack/venv.sh)
PY = $(VENV)/bin/python
export PYTHONPATH := $(ROOT)/crds:$(ROOT)/operator:$(ROOT)/api:$(ROOT)/trainer_image:$(ROOT)/hack
# Nothing in this project may reach a model hub at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: ## Build the cached venv and the Kubernetes binaries (first run only; slow)
	@bash hack/venv.sh >/dev/null
	@bash hack/build-k8s.sh >/dev/null

.PHONY: lint
lint: setup ## ruff + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy crds/ftcrd operator/ftoperator api/ftapi trainer_image/fttrainer hack/processnode

.PHONY: fmt
fmt: ## Format the code
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

.PHONY: manifests
manifests: ## Render crds/finetunejob.yaml, docs/conditions.md and docs/crd-reference.md from crds/ftcrd
	$(PY) -m ftcrd.generate

.PHONY: test
test: setup ## Run the whole suite (starts the local control plane itself)
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

.PHONY: cluster-up
cluster-up: setup ## Start the local control plane + process node (idempotent); last line: export KUBECONFIG=...
	@bash hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop the local control plane
	@bash hack/cluster.sh down
