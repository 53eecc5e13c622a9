# The two commands of the README:
#   make demo   install everything into .venv and run the whole DAG on the generated demo cohort
#   make test   install everything into .venv, lint, and run the test suite (what CI runs)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
CORES ?= 2
# CPU build of PyTorch. On a machine whose pip would pull a CUDA build, pass
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to get the small CPU wheel.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: install demo test test-slurm lint dag report clean validate validate-seeds validate-atlas

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[test,cluster]'
	touch $@

# A lock left by an interrupted run is removed first when no Snakemake process runs in this
# folder (psgfm unlock-stale says so when it does). No --printshellcmds: it printed "Shell command: None" after every script job.
demo: install
	@$(BIN)/psgfm unlock-stale
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --cores 1

test: lint
	$(BIN)/python -m pytest -q

# Model validation (docs/model.md): a larger generated cohort, pretraining, probes.
VALIDATION_N ?= 300
validate: install
	$(BIN)/psgfm demo --out resources/validation --n-subjects $(VALIDATION_N) --hours 1 --seed 20261125
	$(BIN)/snakemake --cores $(CORES) --configfile config/validation.yaml --rerun-incomplete

# Pretraining seeds at 8 epochs (docs/model.md, "All three seeds at 8 epochs"): each seed in
# results-validation-long-s$SEED on make validate's harmonised signals, tensors, splits and
# random-init baseline (run make validate first), then the atlas on its embeddings. ~50 min a seed.
SEEDS ?= 42 43 44
validate-seeds: install
	@for s in $(SEEDS); do \
	  d=results-validation-long-s$$s; mkdir -p $$d/probe; \
	  for f in harmonised tensors events qc; do [ -e $$d/$$f ] || ln -s ../results-validation/$$f $$d/$$f; done; \
	  [ -e $$d/probe/random_init ] || ln -s ../../results-validation/probe/random_init $$d/probe/random_init; \
	  printf 'results: %s\nmodel:\n  seed: %s\n' $$d $$s > $$d/overlay.yaml; \
	  $(BIN)/snakemake --cores $(CORES) $$d/probe/probe.tsv $$d/atlas/atlas.tsv --configfile config/validation.yaml config/validation-long.yaml $$d/overlay.yaml --rerun-incomplete || exit 1; \
	done

# The atlas end to end on a second, larger generated cohort (docs/atlas.md), embedded with the
# encoder `make validate` pretrained (results-validation/model/encoder.pt must exist).
validate-atlas: install
	$(BIN)/psgfm demo --out resources/validation-atlas --n-subjects 600 --hours 1 --seed 20261126
	$(BIN)/snakemake --cores $(CORES) --configfile config/validation.yaml config/validation-atlas.yaml --rerun-incomplete

# The real-SLURM integration test (tests/test_slurm.py): start a single-node SLURM on this
# machine (.ci/slurm.sh; root, Debian 12) or join the one another checkout started, run the
# demo DAG through sbatch, leave (the last user stops the daemons). A SLURM this script did
# not start is used as it is. When SLURM cannot start, the tests skip and say why.
test-slurm: install
	@joined=0; \
	.ci/slurm.sh up; up=$$?; \
	if [ $$up = 0 ]; then joined=1; \
	elif [ $$up != 2 ]; then echo "test-slurm: could not start SLURM (reason above)"; fi; \
	$(BIN)/python -m pytest -m slurm -v -rs tests/test_slurm.py; rc=$$?; \
	if [ $$joined = 1 ]; then .ci/slurm.sh down; fi; \
	exit $$rc

# HTML report of the last run (QC table, hypnograms, phenome summary, benchmark summary, rule
# graph, run times), after `make demo` or any run: results/report.html
report: install
	$(BIN)/snakemake --report results/report.html

dag: install
	$(BIN)/snakemake --rulegraph | dot -Tsvg > docs/rulegraph.svg

clean:
	rm -rf results .snakemake
