# pete-serve: install, serve, test.
#
#   make serve   .venv + pinned runtime deps + project (editable), uvicorn on 127.0.0.1:8000
#   make test    the same + the dev extra, Debian prometheus and chromium when possible, then pytest
#   make image   the container image (docker, else podman/buildah set up by deploy/image/prepare.sh)
#   make image-slim  the torch-free image (ONNX Runtime, PETE_BACKEND=onnx)
#   make lock    regenerate requirements.lock from the versions installed in .venv (pip-tools)
#
# Install order (the Dockerfile follows the same order and the same lock file):
#   1. torch==2.13.0 on its own, without deps (the CPU wheel on these machines)
#   2. requirements.lock: the pinned runtime closure, torch's own deps included
#   3. the project, editable, without deps (so nothing outside the lock sneaks in)
# Stamp files inside .venv make re-runs no-ops until the lock or pyproject.toml change.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip --disable-pip-version-check
TORCH_VERSION := 2.13.0
LOCK := requirements.lock

# make serve HOST=... PORT=... wins over PETE_HOST / PETE_PORT in the environment, which win over the defaults.
HOST ?= $(or $(PETE_HOST),127.0.0.1)
PORT ?= $(or $(PETE_PORT),8000)
MODEL_PATH ?= model/checkpoints/default
PYTEST_ARGS ?=

RUNTIME_STAMP := $(VENV)/.stamp-runtime
DEV_STAMP := $(VENV)/.stamp-dev

.PHONY: help install install-dev serve test deploy-tools image image-slim lock lint-docker clean

help:
	@echo "make serve   install (first run only) and serve on http://$(HOST):$(PORT)"
	@echo "make test    install (first run only) with test tools and run the test suite"
	@echo "make image   build the container image (docker, else podman: deploy/image/build.sh)"
	@echo "make image-slim  build the torch-free image (ONNX Runtime)"
	@echo "make lock    regenerate $(LOCK) from .venv (pip-tools)"

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): $(LOCK) pyproject.toml | $(VPY)
	$(PIP) install --no-deps "torch==$(TORCH_VERSION)"
	$(PIP) install -r $(LOCK)
	$(PIP) install --no-deps -e .
	$(PIP) check
	@touch $@

$(DEV_STAMP): $(RUNTIME_STAMP) pyproject.toml
	$(PIP) install -c $(LOCK) -e ".[dev]"
	@touch $@

install: $(RUNTIME_STAMP)

install-dev: $(DEV_STAMP)

serve: $(RUNTIME_STAMP)
	$(VENV)/bin/pete-serve --host "$(HOST)" --port "$(PORT)" --model "$${PETE_MODEL_PATH:-$(MODEL_PATH)}"

# Debian packages the integration tests drive: prometheus (`prometheus`, `promtool`:
# tests/test_deploy_prometheus.py), chromium (/docs rendered offline: tests/test_app_docs.py) and
# nginx (the deploy's reverse proxy: tests/test_deploy_nginx.py, reliability/attacks.py).
# Installed only when missing and we are root with apt-get; otherwise those tests skip with a reason.
DEPLOY_TOOLS := prometheus:prometheus promtool:prometheus chromium:chromium nginx:nginx

deploy-tools:
	@missing=""; for t in $(DEPLOY_TOOLS); do \
	  command -v "$${t%%:*}" >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	missing="$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' ')"; \
	if [ -z "$${missing// /}" ]; then \
	  echo "deploy tools: $$(for t in $(DEPLOY_TOOLS); do command -v $${t%%:*}; done | tr '\n' ' ')"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian packages: $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } \
	    || echo "WARNING: apt-get install $$missing failed; their tests will skip or fail"; \
	else \
	  echo "NOTE: $$missing not found and not root with apt-get: those tests will be skipped"; \
	fi

# pytest exit 5 means "no tests collected": with a tests/ folder that is a broken collection,
# so it fails the target instead of passing silently.
test: $(DEV_STAMP) deploy-tools
	@rc=0; $(VPY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests (exit 5)" >&2; exit 1; fi; \
	exit $$rc

# The container image: docker when its daemon answers, else podman/buildah (deploy/image/prepare.sh
# installs them and bootstraps the base image where it can: root with apt-get). The size and build
# time land in deploy/image/report.json (README's figure comes from there).
image:
	bash deploy/image/build.sh --report deploy/image/report.json $(if $(IMAGE_TAG),$(IMAGE_TAG),)

image-slim:
	bash deploy/image/build.sh --report deploy/image/report-slim.json --target slim $(if $(IMAGE_TAG),$(IMAGE_TAG),)

lint-docker: $(DEV_STAMP)
	$(VENV)/bin/hadolint Dockerfile

# Regenerate the lock from what .venv has installed (keeps the tested versions), runtime closure only.
# The local "+cpu" label is stripped from the torch pin so that both `pip install torch==2.13.0`
# here and the PyTorch CPU index in the Dockerfile satisfy it.
lock: $(DEV_STAMP)
	$(PIP) install -c $(LOCK) "pip-tools>=7.4"
	@mkdir -p build
	$(PIP) freeze --exclude-editable | grep -v '^-e ' > build/venv-constraints.txt
	$(VENV)/bin/pip-compile --quiet --allow-unsafe --strip-extras --no-emit-index-url \
	  --no-emit-find-links -c build/venv-constraints.txt -o $(LOCK) pyproject.toml
	sed -i -E 's/^torch==([0-9.]+)\+[a-z0-9]+$$/torch==\1/' $(LOCK)
	$(VENV)/bin/pip-compile --quiet --allow-unsafe --strip-extras --no-emit-index-url \
	  --no-emit-find-links -c $(LOCK) -o requirements-slim.lock deploy/image/slim-requirements.in
	@grep -q '^torch==$(TORCH_VERSION)$$' $(LOCK) || { echo "torch is not pinned to $(TORCH_VERSION) in $(LOCK)" >&2; exit 1; }

clean:
	rm -rf build dist *.egg-info .pytest_cache
