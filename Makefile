# fedmask: two entry points, `make demo` and `make test`; both set up .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch's CPU build: on this machine type `pip install torch==2.13.0` is served from local disk.
TORCH  ?= torch==2.13.0
EXTRAS ?= ml,grpc,test

.PHONY: install demo test test-slow test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	@touch $(STAMP)

# The main job: one secure-aggregation round of 50 participants, 20% of them dropping out,
# checked bit for bit against the plaintext sum.
demo: install
	$(BIN)/fedmask simulate --participants 50 --dim 100000 --dropout 0.2

# The default suite: everything not marked slow (under ~10 minutes on 2 cores).
test: install
	$(BIN)/python -m pytest -m "not slow" -q

# CI's second step: the tests marked slow.
test-slow: install
	$(BIN)/python -m pytest -m slow -q

test-all: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/fedmask bench secagg

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
