# chexplain: `make run` runs the study, `make test` runs every test. `make help` lists all targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the study alone (`make run`, `make seeds`, `make report`, `make lab`): the project without its dev extras
RUN_STAMP := $(VENV)/.installed-run
PROFILE ?= default
# where runs land: CHEXPLAIN_RUNS_DIR, as the notebooks read it (a relative one from here), else runs/
RUNS := $(or $(CHEXPLAIN_RUNS_DIR),runs)
# extra papermill arguments for every notebook, e.g. PARAMS='-p n_sanity 4'
PARAMS ?=
# extra papermill arguments of the seed runs (by default none: each seed runs the whole study, as `make run`)
SEED_PARAMS ?=
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# Python caches compiled modules (.pyc) in .venv: where the environment sets PYTHONDONTWRITEBYTECODE (this machine
# does), every process, notebook kernel and joblib worker recompiled torch and the rest on import, about 22 s each
# against 9 s. pip installs without compiling; each module is compiled once, when first imported.
export PYTHONDONTWRITEBYTECODE :=

.PHONY: help install run seeds results report publish test e2e unit lint format lab bench bench-gpu clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -e .
	$(BIN)/python -c "import helpers, torch, zennit, pytorch_grad_cam, papermill"
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -e '.[dev]'
	$(BIN)/python -c "import helpers, torch, zennit, pytorch_grad_cam, torchxrayvision, nbmake, papermill"
	touch $(STAMP)

install: $(STAMP) ## Create .venv (if missing) and install the project with its dev extras (`make run` needs none)

run: $(RUN_STAMP) ## Run the notebooks in order (PROFILE=default); everything lands in runs/<profile>/, no tracked file changes
	mkdir -p $(RUNS)/$(PROFILE)/notebooks
	set -e; for nb in $(NOTEBOOKS); do \
	  echo "== $$nb ($(PROFILE))"; \
	  CHEXPLAIN_PROFILE=$(PROFILE) $(BIN)/papermill --cwd notebooks --progress-bar $$nb \
	    $(RUNS)/$(PROFILE)/notebooks/$$(basename $$nb) -p profile_name $(PROFILE) --start-timeout 600 $(PARAMS); \
	done

seeds: $(RUN_STAMP) ## The study over training seeds: default-seed1 and -seed2 beside `make run`'s default, then the seed table
	@test -f $(RUNS)/$(PROFILE)/metrics/summary.csv || { echo "No $(RUNS)/$(PROFILE)/metrics/summary.csv: run 'make run' first."; exit 1; }
	@# one after the other: two studies side by side (one thread each) twice hung in notebook 03's viewer cell,
	@# papermill waiting on an idle kernel
	set -e; for seed in 1 2; do \
	  $(MAKE) run PROFILE=$(PROFILE)-seed$$seed PARAMS="$(SEED_PARAMS)" > $(RUNS)/seed$$seed.log 2>&1; \
	done
	$(BIN)/python -m helpers.report seeds $(PROFILE) $(PROFILE)-seed1 $(PROFILE)-seed2

results: $(RUN_STAMP) ## Write the README's results block from the default run's tables (a person decides when)
	$(BIN)/python -m helpers.report readme default README.md

report: $(RUN_STAMP) ## A self-contained HTML viewer of a run's heatmaps, no kernel needed: runs/<profile>/figures/viewer.html
	$(BIN)/python -m helpers.report viewer $(PROFILE)

publish: ## Copy the default run's figures and tables into the committed figures/ (a person decides when)
	@test -d $(RUNS)/default/figures || { echo "No $(RUNS)/default/figures: run 'make run' first."; exit 1; }
	cp $(RUNS)/default/figures/fig*_*.pdf $(RUNS)/default/figures/fig*_*.png $(RUNS)/default/figures/table*_* figures/
	if ls $(RUNS)/default/metrics/seeds_*.csv >/dev/null 2>&1; then cp $(RUNS)/default/metrics/seeds_*.csv figures/; fi
	@echo "figures/ updated from $(RUNS)/default/figures; review with 'git diff --stat figures' before committing."

test: $(STAMP) lint ## Lint, unit tests, every notebook in the smoke profile, then the browser test
	CHEXPLAIN_PROFILE=smoke $(BIN)/pytest tests notebooks -m "not e2e" --nbmake --nbmake-timeout=1200 --durations=12
	$(MAKE) e2e

e2e: $(STAMP) ## The viewers in JupyterLab and the HTML viewer, in headless Chromium (after the smoke notebooks)
	CHEXPLAIN_PROFILE=smoke $(BIN)/pytest tests/e2e -m e2e -v

unit: $(STAMP) ## Unit tests without the notebooks and the slow tests (about a minute)
	CHEXPLAIN_PROFILE=smoke $(BIN)/pytest tests -m "not slow and not e2e" -q

lint: $(STAMP) ## ruff: lint and format check (helpers, tests, benchmarks, scripts, notebooks)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## ruff: fix what can be fixed and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lab: $(RUN_STAMP) ## Open JupyterLab on the notebooks
	$(BIN)/jupyter lab notebooks

bench: $(STAMP) ## Run the benchmarks in benchmarks/ and print their tables (after make run: some read its model)
	set -e; for script in $(filter-out benchmarks/bench_gpu%.py,$(wildcard benchmarks/bench_*.py)); do \
	  echo "== $$script"; $(BIN)/python $$script; done

bench-gpu: $(STAMP) ## The paper profile on a GPU, per notebook and step, then notebooks 03-05 by papermill
	$(BIN)/python benchmarks/bench_gpu.py --notebooks

clean: ## Remove run folders (data caches, checkpoints, executed notebooks); keeps .venv
	rm -rf runs
	@# a folder named by CHEXPLAIN_RUNS_DIR may hold other things too: not removed wholesale
	@if [ "$(RUNS)" != runs ]; then echo "CHEXPLAIN_RUNS_DIR is set: remove the run folders in $(RUNS) yourself ($(RUNS)/<profile>)."; fi
