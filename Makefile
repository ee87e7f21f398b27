# Entry points of the pipeline. `make help` lists them.
#   make demo        the whole job on generated sample data, offline
#   make test        the whole test suite (what CI runs)
#   make cluster-test  the image built and k8s/ rehearsed in podman containers (CI runs it too)
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

# Real data (make download / make preprocess).
RAW     ?= data/raw
OUT     ?= data/tfrecords
DATASET ?= all
# Sample data (make sample-data / make demo).
SAMPLE  ?= data/sample
SEED    ?= 0
NP      ?= 2
# Extra flags, e.g. make preprocess ARGS="--num-shards 8 --runner=DataflowRunner ..."
ARGS    ?=
# TensorBoard and plots.
LOGDIR  ?= runs
PORT    ?= 6006

.PHONY: help install lint format test test-fast cluster-test gpu-image demo sample-data download preprocess bench gpu-check tensorboard plots clean

# The variables the target descriptions name, shown with their values
# (tests/test_make_help.py fails on any $(VAR) left unexpanded).
HELP_VARS := RAW OUT DATASET SAMPLE SEED NP ARGS LOGDIR PORT
help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}' \
	  | sed $(foreach v,$(HELP_VARS),-e 's|$$($(v))|$($(v))|g')

install: $(STAMP) ## Create .venv/ with pinned packages and Horovod built for TensorFlow 2.21.

$(STAMP): requirements.txt constraints.txt setup.py scripts/install.sh
	bash scripts/install.sh
	@touch $@

lint: $(STAMP) ## Check formatting and lint with ruff (settings in pyproject.toml); CI runs it.
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP) ## Format the code and apply ruff's safe fixes.
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP) ## Run the whole test suite, slow tests included (CI runs this).
	$(PY) -m pytest

test-fast: $(STAMP) ## Run the tests not marked slow.
	$(PY) -m pytest -m "not slow"

cluster-test: $(STAMP) ## Build the CPU image and run k8s/overlays/rehearsal's commands in podman containers (root; installs podman).
	PY=$(PY) bash scripts/cluster_test.sh $(ARGS)

gpu-image: $(STAMP) ## Build docker/Dockerfile (CUDA, Horovod with NCCL) with podman and check it without a GPU (root; ~1 h cold; not in CI).
	PY=$(PY) SCRIPT=scripts/gpu_image.py bash scripts/cluster_test.sh $(ARGS)

sample-data: $(STAMP) ## Generate small raw data sets in the official formats under $(SAMPLE)/raw.
	$(PY) -m preprocess.sample_data --out-dir $(SAMPLE)/raw --seed $(SEED)

download: $(STAMP) ## Download the official CIFAR-10, MNIST and cat/dog archives into $(RAW).
	$(PY) -m preprocess.download --dataset $(DATASET) --raw-dir $(RAW) $(ARGS)

preprocess: $(STAMP) ## Convert $(RAW) into sharded TFRecords under $(OUT) with the Beam job, then verify them.
	$(PY) -m pipeline.build_tfrecords --dataset $(DATASET) --raw-dir $(RAW) --out-dir $(OUT) $(ARGS)
	$(PY) -m pipeline.build_tfrecords --verify-data --dataset $(DATASET) --out-dir $(OUT)

demo: $(STAMP) ## Run the whole job on sample data: generate, convert, train with horovodrun -np $(NP), evaluate.
	bash scripts/demo.sh "$(SAMPLE)" "$(NP)"

gpu-check: $(STAMP) ## Check this machine's GPUs: TensorFlow's view, NCCL, a bitwise allreduce, training speed (CPU path without a GPU).
	$(PY) -m bench.gpu_check $(ARGS)

tensorboard: $(STAMP) ## Serve TensorBoard for the runs under $(LOGDIR) on localhost:$(PORT).
	@echo "TensorBoard: http://localhost:$(PORT)/ (logdir $(LOGDIR); Ctrl-C stops it)"
	$(VENV)/bin/tensorboard --logdir $(LOGDIR) --host localhost --port $(PORT)

plots: $(STAMP) ## Write PNG plots of training loss and evaluation accuracy per run to $(LOGDIR)/plots.
	$(PY) -m trainers.plots --logdir $(LOGDIR)

bench: $(STAMP) ## Run the benchmarks and append the figures to bench/RESULTS.md.
	$(PY) -m bench.run

clean: ## Remove generated data and runs (keeps .venv and the Horovod wheel cache).
	rm -rf data/sample runs/demo
