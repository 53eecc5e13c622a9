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

.PHONY: install demo test test-heavy test-slurm lint dag report clean validate validate-seeds validate-atlas

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
	$(BIN)/psgfm demo-check results

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint --cores 1

test: lint
	$(BIN)/python -m pytest -q

# The heavy tests (torch.compile with inductor on CPU: minutes of C++ builds), deselected by
# make test; CI runs them once.
test-heavy: install
	$(BIN)/python -m pytest -q -m heavy

# Model validation (docs/model.md): a larger generated cohort, pretraining, probes.
VALIDATION_N ?= 300
validate: install
	$(BIN)/psgfm demo --out resources/validation --n-subjects $(VALIDATION_N) --hours 1 --seed 20261125
	$(BIN)/snakemake --cores $(CORES) --configfile config/validation.yaml --rerun-incomplete

# Pretraining seeds at 8 epochs (experiments/2026-11-26-pretrain-8-epochs): each seed in
# results-validation-long-s$SEED on make validate's harmonised signals, tensors, splits and
# random-init baseline (run make validate first), then the atlas on its embeddings. ~50 min a seed.
SEEDS ?= 42 43 44
validate-seeds: install
	@for s in $(SEEDS); do \
	  d=results-validation-long-s$$s; mkdir -p $$d/probe; \
	  for f in harmonised tensors events qc; do [ -e $$d/$$f ] || ln -s ../results-validation/$$f $$d/$$f; done; \
	  [ -e $$d/probe/random_init ] || ln -s ../../results-validation/probe/random_init $$d/probe/random_init; \
	  printf 'results: %s\nmodel:\n  seed: %s\n' $$d $$s > $$d/overlay.yaml; \
	  $(BIN)/snakemake --cores $(CORES) $$d/probe/probe.tsv $$d/atlas/atlas.tsv --configfile config/validation.yaml experiments/2026-11-26-pretrain-8-epochs/validation-long.yaml $$d/overlay.yaml --rerun-incomplete || exit 1; \
	done

# The atlas end to end on a second, larger generated cohort (experiments/2026-11-26-atlas-cohort2),
# embedded with the encoder `make validate` pretrained (results-validation/model/encoder.pt must
# exist).
validate-atlas: install
	$(BIN)/psgfm demo --out resources/validation-atlas --n-subjects 600 --hours 1 --seed 20261126
	$(BIN)/snakemake --cores $(CORES) --configfile config/validation.yaml experiments/2026-11-26-atlas-cohort2/validation-atlas.yaml --rerun-incomplete

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

# Measure a lent GPU in one call (docs/benchmarks.md, "GPU check"): the GPU tests, the model
# benchmark in bf16 with and without torch.compile, ~2 min of base pretraining, DDP on several
# GPUs; writes benchmarks/out/gpu/gpu_check.{json,md}. Needs only Python with torch, numpy,
# pyarrow, pandas and matplotlib (no venv, no MNE/polars/Snakemake). gpu-check-dry runs every
# step on the CPU with the tiny config. gpu-wheels fetches pytest's pure-Python wheels into
# benchmarks/out/wheels for a machine that lacks pytest (carry that folder).
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
.PHONY: gpu-check gpu-check-dry gpu-wheels
gpu-check:
	PYTHONPATH=workflow $(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

gpu-check-dry:
	PYTHONPATH=workflow $(GPU_PYTHON) benchmarks/gpu_check.py --dry-run $(GPU_CHECK_ARGS)

gpu-wheels:
	$(GPU_PYTHON) -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 \
	  -d benchmarks/out/wheels pytest pluggy iniconfig packaging pygments
