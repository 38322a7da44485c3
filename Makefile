# Two commands do all set-up: `make reproduce` (the embedded default, end to end) and `make test`.
# No activation needed: the targets put the venv's bin first on PATH, and the rules run `didi` through the
# Python that runs Snakemake.
VENV ?= .venv
PYTHON ?= python3
CORES ?= all
SMK_ARGS ?=
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup reproduce smoke report test lint format bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev,wandb]'
	touch $@

setup: $(VENV)/.installed

reproduce: setup  ## the whole DAG on the embedded default, then the HTML report
	snakemake --cores $(CORES) --rerun-incomplete $(SMK_ARGS)
	snakemake --report report.html $(SMK_ARGS)

smoke: setup  ## the whole DAG on a tiny config (a few minutes)
	snakemake --cores $(CORES) --rerun-incomplete --configfile presets/smoke.yaml $(SMK_ARGS)

test: setup  ## unit tests, workflow lint/dry-runs, the smoke run, and the SLURM test where SLURM runs
	python -m pytest -ra $(PYTEST_ARGS)

lint: setup
	snakemake --lint
	snakefmt --check .

format: setup
	snakefmt .

bench: setup  ## throughput benchmarks into results/bench/
	snakemake --cores $(CORES) --rerun-incomplete bench $(SMK_ARGS)

clean:
	rm -rf results .snakemake report.html
