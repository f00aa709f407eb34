# finetune-operator: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(abspath .)
VENV = $(shell bash hack/venv.sh)
PY = $(VENV)/bin/python
export PYTHONPATH := $(ROOT)/crds:$(ROOT)/operator:$(ROOT)/api:$(ROOT)/trainer_image:$(ROOT)/localcluster:$(ROOT)/plugin
# Nothing in this project may reach a model hub at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: venv
venv: ## Build the cached venv (first run only; downloads torch)
	@bash hack/venv.sh >/dev/null

.PHONY: setup
setup: venv ## Build the cached venv, the Kubernetes binaries, Kueue and helm (first run only; slow)
	@bash localcluster/build-k8s.sh >/dev/null
	@$(MAKE) --no-print-directory tools

.PHONY: lint
lint: venv ## ruff + mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy crds/ftcrd operator/ftoperator api/ftapi trainer_image/fttrainer localcluster/processnode localcluster/ftdev plugin/ftkubectl

.PHONY: fmt
fmt: ## Format the code
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

.PHONY: manifests
manifests: ## Render crds/finetunejob.yaml, docs/conditions.md, docs/crd-reference.md and the admission policies from crds/ftcrd, and the chart
	$(PY) -m ftcrd.generate
	$(PY) -m ftdev.chart

.PHONY: chart
chart: ## Regenerate the Helm chart deploy/chart from the kustomize base deploy/base (its one source)
	$(PY) -m ftdev.chart

.PHONY: openapi
openapi: ## Write api/openapi.json (the API's OpenAPI document; a test fails when it is stale)
	$(PY) -c "from ftapi.main import openapi_document; open('api/openapi.json', 'w').write(openapi_document())"

.PHONY: manifests-check
manifests-check: manifests openapi ## Fail when generated files (CRD, docs, OpenAPI) differ from the checked-in ones
	git diff --exit-code -- crds docs/conditions.md docs/crd-reference.md api/openapi.json deploy/chart deploy/base/admission deploy/base/trainer/own-job-policy.yaml

# Tiers (tests/support/tiers.py): unit (pure, seconds; needs only the venv), process (real trainer runs, the GCS
# emulator), cluster (the local control plane), e2e (operator + real trainer on it). `make test` runs them all.
PYTEST = $(PY) -m pytest -q -ra

.PHONY: test
test: setup ## Run the whole suite (starts the local control plane itself)
	$(PYTEST) $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: venv ## Pure tests only: no cluster, no Kubernetes build, no servers (well under a minute)
	@start=$$(date +%s%N); rc=0; $(PYTEST) -m unit $(PYTEST_ARGS) || rc=$$?; \
	  ms=$$(( ($$(date +%s%N) - start) / 1000000 )); echo ">> test-unit: $$((ms / 1000)).$$((ms % 1000 / 100))s wall"; exit $$rc

.PHONY: tools
tools: ## Build Kueue and helm from their Go modules (first run only; cached by version)
	@bash localcluster/build-tool.sh kueue >/dev/null
	@bash localcluster/build-tool.sh helm >/dev/null

.PHONY: test-process
test-process: venv tools ## Real local processes without a cluster: torchrun trainer runs, the GCS emulator, helm
	$(PYTEST) -m process $(PYTEST_ARGS)

.PHONY: test-cluster
test-cluster: setup ## Tests on the local control plane, without the e2e ones
	$(PYTEST) -m "cluster and not e2e" $(PYTEST_ARGS)

.PHONY: test-e2e
test-e2e: setup ## Operator + real trainer (and the demo) on the local control plane
	$(PYTEST) -m e2e $(PYTEST_ARGS)

.PHONY: cluster-up
cluster-up: setup ## Start the local control plane + process node (idempotent); last line: export KUBECONFIG=...
	@bash localcluster/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop the local control plane
	@bash localcluster/cluster.sh down

.PHONY: kueue-up
kueue-up: cluster-up ## Start Kueue (the pinned release, built by setup) against the local control plane
	@$(PY) -m ftdev.kueue up

.PHONY: kueue-down
kueue-down: ## Stop Kueue and unregister its webhooks (cluster-down stops it too)
	@$(PY) -m ftdev.kueue down

# --- images, kind and deployment (issue #7): see README.md "Deploy" ---------------------------------
IMAGE_PREFIX ?= finetune-operator
IMAGE_TAG ?= dev
IMAGES := operator api trainer gcs-emulator
KIND_CLUSTER ?= finetune
# kind | gpu | local (deploy/overlays/*); `make deploy OVERLAY=gpu` for a real GPU cluster
OVERLAY ?= kind
KUBECTL ?= $(VENV)/bin/kubectl
need = @command -v $(1) >/dev/null 2>&1 || { echo "$@: '$(1)' not found on PATH. $(2)" >&2; exit 1; }

.PHONY: docker-build
docker-build: ## Build the operator, API and trainer images (finetune-operator/<name>:dev; needs Docker)
	$(call need,docker,Install Docker (https://docs.docker.com/get-docker/) or use 'make demo', which needs none.)
	@docker info >/dev/null 2>&1 || { echo "docker-build: the docker CLI cannot reach a Docker engine (is dockerd running?). 'make demo' needs no Docker." >&2; exit 1; }
	@set -e; for i in operator api; do \
	  echo ">> docker build $(IMAGE_PREFIX)/$$i:$(IMAGE_TAG)"; \
	  docker build -f $$i/Dockerfile -t $(IMAGE_PREFIX)/$$i:$(IMAGE_TAG) .; \
	done
	docker build -f deploy/images/gcs-emulator.Dockerfile -t $(IMAGE_PREFIX)/gcs-emulator:$(IMAGE_TAG) deploy/images
	@echo ">> docker build $(IMAGE_PREFIX)/trainer:$(IMAGE_TAG) (CUDA PyTorch base: large)"
	docker build -f trainer_image/Dockerfile -t $(IMAGE_PREFIX)/trainer:$(IMAGE_TAG) .

.PHONY: kind-up
kind-up: ## Create a kind cluster named finetune (KIND_CLUSTER=...; needs Docker and kind)
	$(call need,docker,Install Docker (https://docs.docker.com/get-docker/).)
	$(call need,kind,Install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation).)
	@kind get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' && echo ">> kind cluster $(KIND_CLUSTER) exists" \
	  || kind create cluster --name $(KIND_CLUSTER) --wait 120s

.PHONY: kind-load
kind-load: docker-build ## Build the images and load them into the kind cluster
	$(call need,kind,Install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation).)
	@set -e; for i in $(IMAGES); do kind load docker-image --name $(KIND_CLUSTER) $(IMAGE_PREFIX)/$$i:$(IMAGE_TAG); done

.PHONY: deploy
deploy: ## Apply deploy/overlays/OVERLAY (kind by default; OVERLAY=gpu for production) to the current context, wait for rollout
	@$(PY) hack/deployctl.py apply --overlay $(OVERLAY) --kubectl $(KUBECTL) --wait

.PHONY: undeploy
undeploy: ## Delete what 'make deploy' created (FineTuneJobs and their children go with the CRD)
	@$(PY) hack/deployctl.py delete --overlay $(OVERLAY) --kubectl $(KUBECTL)

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	$(call need,kind,Install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation).)
	kind delete cluster --name $(KIND_CLUSTER)

.PHONY: demo
demo: ## Webhook to uploaded model on CPU, on the local control plane (no Docker, no GPU); cleans up after itself
	@bash hack/demo.sh $(DEMO_ARGS)
