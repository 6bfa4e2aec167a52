# Set-up and everyday commands. `make train` and `make test` work on a fresh clone:
# they create .venv, install the pinned versions tested here, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?= -m "not slow"

.PHONY: install train test test-all lint format bench clean slurm slurm-down

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -c constraints.txt -e '.[dev,sweeps]'
	touch $@

install: $(STAMP)

train: $(STAMP)
	$(BIN)/vae-train $(ARGS)

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# A single-host SLURM cluster (root; installs slurm-wlm and munge if missing): for trying
# hydra/launcher=slurm locally and for tests/test_slurm.py. See docs/slurm-local.md.
slurm:
	scripts/slurm/up.sh

slurm-down:
	scripts/slurm/down.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
