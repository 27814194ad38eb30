# embedlens: set up and run in one command each.
#   make run    create .venv, install, build every target of config.yaml
#   make demo   the whole workflow offline on a synthetic dataset with a real pretrained model
#   make test   create .venv, install with test extras, run the test suite
#   make lint   snakemake --lint
#   make dag    the DAG of config.yaml as dag.svg (needs graphviz's dot)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 8
GPUS ?= 1
SNAKEMAKE := $(BIN)/snakemake --cores $(CORES) --resources gpu=$(GPUS)

.PHONY: install run demo test lint dag clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$*]"
	touch $@

install: $(VENV)/.installed-demo

run: $(VENV)/.installed-demo
	$(SNAKEMAKE)

demo: $(VENV)/.installed-demo
	$(SNAKEMAKE) --configfile configs/demo.yaml

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-demo
	$(BIN)/snakemake --lint

dag: $(VENV)/.installed-demo
	$(BIN)/snakemake --dag | dot -Tsvg > dag.svg

clean:
	rm -rf results .snakemake
