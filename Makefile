# embedlens: set up and run in one command each.
#   make run    create .venv, install, build results/report.html (every stage of config.yaml)
#   make run CONFIG=my.yaml   the same with my.yaml alone (config.yaml's keys are not merged in); the
#               report goes under my.yaml's results: folder, and make prints where
#   make demo   the same offline on a synthetic dataset with a real pretrained model (configs/demo.yaml)
#   make snakemake-report   Snakemake's provenance report of the run, snakemake-report.zip beside the
#               report (CONFIG=configs/demo.yaml after make demo)
#   make unlock after a run was killed hard ("Directory cannot be locked"): free the folder, then rerun
#   make test   create .venv, install with test extras and the browser, run the test suite
#   make lint   snakemake --lint
#   make dag    the DAG as dag.svg (needs graphviz's dot)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= $(shell getconf _NPROCESSORS_ONLN 2>/dev/null || echo 4)
GPUS ?= 1
CONFIG ?=
# One extraction job runs per GPU; they share the cores (at least one thread each).
EXTRACT_THREADS := $(shell expr $(CORES) / $(GPUS) \| 1)
# --replace-workflow-config: CONFIG is the whole configuration, not merged over config.yaml.
CONFIG_FLAGS := $(if $(CONFIG),--configfile $(CONFIG) --replace-workflow-config)
SNAKEMAKE := $(BIN)/snakemake --cores $(CORES) --resources gpu=$(GPUS) --set-threads extract_shard=$(EXTRACT_THREADS)
DEMO_CONFIG := configs/demo.yaml
# The absolute results: folder of the config file given as its argument (read once the run has checked it).
RESULTS_OF = $(BIN)/python -c 'import os, sys; from embedlens.config import load_config; \
	print(os.path.abspath(load_config(sys.argv[1])["results"]))'

.PHONY: install run demo snakemake-report unlock test browser lint dag clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$*]"
	touch $@

install: $(VENV)/.installed-demo

run: $(VENV)/.installed-demo
	$(SNAKEMAKE) $(CONFIG_FLAGS)
	@echo "report: $$($(RESULTS_OF) $(or $(CONFIG),config.yaml))/report.html"

demo: $(VENV)/.installed-demo
	$(SNAKEMAKE) --configfile $(DEMO_CONFIG) --replace-workflow-config
	@echo "report: $$($(RESULTS_OF) $(DEMO_CONFIG))/report.html"

snakemake-report: $(VENV)/.installed-demo
	$(SNAKEMAKE) $(CONFIG_FLAGS) --report "$$($(RESULTS_OF) $(or $(CONFIG),config.yaml))/snakemake-report.zip"
	@echo "Snakemake's report: $$($(RESULTS_OF) $(or $(CONFIG),config.yaml))/snakemake-report.zip"

# The lock belongs to the working folder, whichever config the killed run had.
unlock: $(VENV)/.installed-demo
	$(SNAKEMAKE) $(CONFIG_FLAGS) --unlock

# The browser test drives Debian's Chromium through Selenium; install it where we can (root with
# apt-get, as in CI), else the test skips and says why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "could not install chromium and chromium-driver: the browser test will be skipped"; \
	else echo "chromium and chromium-driver are missing (install them as root): the browser test will be skipped"; fi

# Two pytest workers, each test file on one: the workflow tests spend much of their time waiting on
# Snakemake, SLURM and apt, so two at a time finish sooner even on two cores.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-test browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(VENV)/.installed-demo
	$(BIN)/snakemake $(CONFIG_FLAGS) --lint

# dot writes dag.svg only from a complete DAG, so a failure leaves no empty dag.svg behind.
dag: $(VENV)/.installed-demo
	@command -v dot >/dev/null || { echo "make dag needs graphviz's dot: apt install graphviz (Debian, Ubuntu)," \
	  "brew install graphviz (macOS) or conda install graphviz; then run make dag again"; exit 1; }
	$(BIN)/snakemake $(CONFIG_FLAGS) --dag > .dag.dot && dot -Tsvg .dag.dot -o dag.svg; \
	  status=$$?; rm -f .dag.dot; exit $$status

clean:
	rm -rf results .snakemake
