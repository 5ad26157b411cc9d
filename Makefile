# fedmask: two entry points, `make demo` and `make test`; both set up .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch's CPU build: on this machine type `pip install torch==2.13.0` is served from local disk.
TORCH  ?= torch==2.13.0
EXTRAS ?= ml,grpc,test

.PHONY: install demo test test-slow test-all bench clean wheelhouse image test-container

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	@touch $(STAMP)

# The main job: two hospitals and a bank federate a DP-LoRA adapter over mTLS gRPC under
# secure aggregation (fedmask demo; the report folder is printed at the start).
demo: install
	$(BIN)/fedmask demo

# The default suite: lint, formatting and types first, then everything not marked slow (under
# 5 minutes on 2 cores).
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHON=$(BIN)/python .ci/typecheck
	$(BIN)/python -m pytest -m "not slow" -q

# CI's second step: the tests marked slow.
test-slow: install
	$(BIN)/python -m pytest -m slow -q

test-all: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/fedmask bench secagg

# --- containers (docker/) --------------------------------------------------------------------
# Every wheel the image installs (torch's CPU build included), pinned to the versions in .venv,
# so that the image builds with no network: `docker build --build-arg WHEELHOUSE=wheelhouse`.
WHEELHOUSE ?= wheelhouse
IMAGE      ?= fedmask:latest
CONTAINER_ENGINE ?= $(shell command -v docker >/dev/null 2>&1 && echo docker || echo podman)

wheelhouse: install
	@mkdir -p $(WHEELHOUSE)
	$(BIN)/python docker/image_requirements.py --extras ml,grpc --torch "$(TORCH)" > $(WHEELHOUSE)/requirements.txt
	$(BIN)/python -m pip freeze --exclude-editable > $(WHEELHOUSE)/constraints.txt
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --wheel-dir $(WHEELHOUSE) \
		-r $(WHEELHOUSE)/requirements.txt -c $(WHEELHOUSE)/constraints.txt

# The image from the wheelhouse, without network access (the air-gapped build). BUILDAH_FORMAT:
# podman writes OCI images by default, which have no HEALTHCHECK; docker ignores it.
image: wheelhouse
	BUILDAH_FORMAT=docker $(CONTAINER_ENGINE) build --network=none --build-arg WHEELHOUSE=$(WHEELHOUSE) \
		-f docker/Dockerfile -t $(IMAGE) .

# Builds the image (from the wheelhouse, network off) and runs the compose demo to completion
# (tests/docker; needs docker with compose, or podman + podman-compose). About 15 minutes on 2 cores.
test-container: wheelhouse
	FEDMASK_CONTAINER_TESTS=1 $(BIN)/python -m pytest -m container -q tests/docker

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
