# embedlens: set up and run in one command each.
#   make run    create .venv, install, build results/report.html (every stage of config.yaml)
#   make demo   the same offline on a synthetic dataset with a real pretrained model
#   make test   create .venv, install with test extras and the browser, run the test suite
#   make lint   snakemake --lint
#   make dag    the DAG of config.yaml as dag.svg (needs graphviz's dot)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 8
GPUS ?= 1
SNAKEMAKE := $(BIN)/snakemake --cores $(CORES) --resources gpu=$(GPUS)
REPORT := $(abspath results/report.html)

.PHONY: install run demo test browser lint dag clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$*]"
	touch $@

install: $(VENV)/.installed-demo

run: $(VENV)/.installed-demo
	$(SNAKEMAKE)
	@echo "report: $(REPORT)"

demo: $(VENV)/.installed-demo
	$(SNAKEMAKE) --configfile configs/demo.yaml
	@echo "report: $(REPORT)"

# The browser test drives Debian's Chromium through Selenium; install it where we can (root with
# apt-get, as in CI), else the test skips and says why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "could not install chromium and chromium-driver: the browser test will be skipped"; \
	else echo "chromium and chromium-driver are missing (install them as root): the browser test will be skipped"; fi

test: $(VENV)/.installed-test browser
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-demo
	$(BIN)/snakemake --lint

dag: $(VENV)/.installed-demo
	$(BIN)/snakemake --dag | dot -Tsvg > dag.svg

clean:
	rm -rf results .snakemake
