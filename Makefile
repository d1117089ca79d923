# Two entry points, each doing all the set-up it needs on a fresh machine:
#   make demo   - the main job (zero-shot classification of the shipped example images)
#   make test   - lint, format check and the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision pinned together: the peers (timm, open_clip) need a matching torchvision
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pe classify examples/images/*.png --labels "red square,green triangle,blue cross,yellow star,purple circle,white diamond"

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/pytest -p no:cacheprovider
