# After cloning: `make train` trains the original recipe, `make test` runs the test suite.
# Each creates .venv with python3 -m venv if it is missing and installs only what is missing there.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where CIFAR-10 is read from; a first run downloads it there (about 170 MB), see docs/data.md.
DATA_DIR ?= data
# PyTorch's CPU build by default, so that a machine without an NVIDIA GPU does not pull the CUDA
# build (several GB). With a GPU: make train TORCH_INDEX=https://download.pytorch.org/whl/cu128
# (any index URL from the install selector on pytorch.org works). It is used only while .venv has
# no torch yet: to switch builds, delete .venv. Empty (TORCH_INDEX=): pip's own configuration decides.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# More options for fit, after the config: make train ARGS="--trainer.max_epochs 30"
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help train test torch

help:
	@echo "make train  install the package with [export,serve] into $(VENV), then train configs/base.yaml"
	@echo "            on the CIFAR-10 in DATA_DIR (now $(DATA_DIR); downloaded there if missing)"
	@echo "make test   install the package with [dev] into $(VENV) (and Chromium, as root), then run pytest"
	@echo "Variables: DATA_DIR, ARGS (more fit options), TORCH_INDEX (now $(TORCH_INDEX)), PYTHON, VENV"

$(PY):
	$(PYTHON) -m venv $(VENV)

# PyTorch first, from TORCH_INDEX, where .venv has none: pip would otherwise take the CUDA build from PyPI.
torch: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch torchvision $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

# The download is on by default (--data.download true), so a fresh machine needs nothing more.
train: torch
	$(PY) -m pip install -e ".[export,serve]"
	$(PY) -m cifar_lightning fit --config configs/base.yaml --data.data_dir $(DATA_DIR) $(ARGS)

# The web page test drives Debian's Chromium (tests/test_serve.py): installed where it is missing, as .ci/run does.
test: torch
	@if [ ! -x /usr/bin/chromium ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        export DEBIAN_FRONTEND=noninteractive; \
	        apt-get update -qq && \
	        apt-get install -y -qq --no-install-recommends chromium > /dev/null; \
	    else \
	        echo "No /usr/bin/chromium and not root: the browser test will be skipped (apt-get install chromium)." >&2; \
	    fi; \
	fi
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pytest
