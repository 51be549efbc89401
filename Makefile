# The README's commands. Each target sets up .venv first (once; again when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Where retinamnist.npz lives: $RETINA_GANS_DATA if set, else ../shared/data when it holds the file
# (the development machines), else ./data (downloaded there on first use).
RETINA_GANS_DATA ?= $(if $(wildcard ../shared/data/retinamnist.npz),$(abspath ../shared/data),$(abspath data))
export RETINA_GANS_DATA
ARGS ?=

.PHONY: setup train test bench compare validity tensorboard clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

train: setup
	$(PY) -m retina_gans.train model=lsgan $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

bench: setup
	$(PY) -m retina_gans.bench $(ARGS)

compare: setup
	$(PY) -m retina_gans.compare $(ARGS)

validity: setup
	$(PY) -m retina_gans.metrics.validity $(ARGS)

tensorboard: setup
	$(VENV)/bin/tensorboard --logdir logs

clean:
	rm -rf $(VENV) .pytest_cache
