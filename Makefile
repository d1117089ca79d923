# Two entry points, each doing all the set-up it needs on a fresh machine:
#   make demo   - the main job (zero-shot classification of the shipped example images)
#   make test   - lint, format check and the whole test suite, then the core tests on the lowest versions
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup test-lowest

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
	# headless Chromium (the Debian package) for the search page's browser test; without it that test is skipped
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed: the browser test will be skipped"
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/pytest -p no:cacheprovider
	$(MAKE) --no-print-directory test-lowest

# The lowest declared versions: a second venv with exactly the pins of $(LOWEST) (= the lower bounds of
# pyproject.toml's dependencies), the package without extras, and the core tests: the whole suite, where
# .ci/pytest_core_only.py turns a test that needs an extra (timm, open_clip, av, pyarrow, ...) into a skip.
LOWEST_VENV ?= .venv-lowest
LOWEST := .ci/lowest-versions.txt
LOWEST_STAMP := $(LOWEST_VENV)/.installed

$(LOWEST_STAMP): pyproject.toml $(LOWEST)
	python3 -m venv --clear $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOWEST_VENV)/bin/python -m pip install -q -c $(LOWEST) -e . pytest
	touch $(LOWEST_STAMP)

test-lowest: $(LOWEST_STAMP)
	$(LOWEST_VENV)/bin/python -c "import importlib.metadata as m, re; print('lowest versions:', *(f'{n}=={m.version(n)}' for n in re.findall(r'^([\w.-]+)==', open('$(LOWEST)').read(), re.M)))"
	PYTHONPATH=$(CURDIR)/.ci $(LOWEST_VENV)/bin/pytest -p no:cacheprovider -p pytest_core_only -rs
