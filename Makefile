# Two commands do all set-up: `make reproduce` (the embedded default, end to end) and `make test`.
# No activation needed: the targets put the venv's bin first on PATH, and the rules run `didi` through the
# Python that runs Snakemake.
VENV ?= .venv
PYTHON ?= python3
CORES ?= all
SMK_ARGS ?=
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup reproduce ablation smoke report test lint format bench docs clean clean-all

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev,wandb]'
	touch $@

setup: $(VENV)/.installed

reproduce: setup  ## the whole DAG on the embedded default, then the HTML report
	snakemake --cores $(CORES) --rerun-incomplete $(SMK_ARGS)
	snakemake --report report.html $(SMK_ARGS)

ablation: setup  ## the paper's cumulative ablation (7 variants x 2 seeds) into results/ablation, with its report
	snakemake --cores $(CORES) --rerun-incomplete --configfile presets/ablation.yaml $(SMK_ARGS)
	snakemake --report results/ablation/report.html --configfile presets/ablation.yaml $(SMK_ARGS)

smoke: setup  ## the whole DAG on a tiny config (a few minutes)
	snakemake --cores $(CORES) --rerun-incomplete --configfile presets/smoke.yaml $(SMK_ARGS)

test: setup  ## unit tests, workflow lint/dry-runs, the smoke run, and the SLURM test where SLURM runs
	python -m pytest -ra $(PYTEST_ARGS)

lint: setup
	snakemake --lint
	snakefmt --check .

format: setup
	snakefmt .

bench: setup  ## throughput benchmarks and the distillation cost (~30 min on 2 cores) into results/bench/
	snakemake --cores $(CORES) --rerun-incomplete bench $(SMK_ARGS)

docs: setup  ## regenerate docs/configuration.md (from the schema + config.yaml) and docs/cli.md (from argparse)
	python scripts/gen_docs.py

# `make clean` deletes the default run's outputs (results/ itself) but keeps the other runs below it: every
# directory of results/ holding its own logs/ (results/smoke, a `--config results=results/seed2` run) and results/paper,
# and .snakemake/ (their Snakemake metadata) while one is kept. `make clean-all` (or `make clean CLEAN_PAPER=1`)
# deletes every run, results/paper included (days of GPU work).
RESULTS ?= results
CLEAN_PAPER ?=

clean:
ifeq ($(CLEAN_PAPER),)
	@kept=""; \
	for d in $(RESULTS)/*/; do \
	  d=$${d%/}; \
	  if [ -d "$$d/logs" ] || [ "$$d" = "$(RESULTS)/paper" ]; then kept="$$kept $$d"; else rm -rf "$$d"; fi; \
	done; \
	find $(RESULTS) -mindepth 1 -maxdepth 1 ! -type d -exec rm -f {} + 2>/dev/null || true; \
	rm -f report.html; \
	if [ -n "$$kept" ]; then \
	  echo "make clean: deleted the default run's outputs in $(RESULTS)/ and report.html; KEPT the other runs:$$kept"; \
	  echo "  and .snakemake/ (their metadata). Delete everything, those runs included: make clean-all"; \
	else \
	  rm -rf $(RESULTS) .snakemake; \
	  echo "make clean: deleted $(RESULTS)/, .snakemake/ and report.html (no other run was kept)"; \
	fi
else
	@$(MAKE) --no-print-directory clean-all
endif

clean-all:  ## every run's outputs, results/paper included
	@echo "make clean-all: deleting $(RESULTS)/ (every run in it, results/paper included), .snakemake/ and report.html"
	rm -rf $(RESULTS) .snakemake report.html
