# rmp: `make setup` once, then `make demo` (the main job on bundled data) or `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RMP    := $(BIN)/rmp
ARCH   := $(shell uname -m)
# Pinned builds that install from the local wheel cache on the reference machines;
# override with `make setup TORCH_PIN=` to let pip choose (setup.cfg accepts torch>=2.4).
ifeq ($(ARCH),aarch64)
TORCH_PIN ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
endif
FMNIST_PKG := /usr/share/datasets/fashion-mnist
CIFAR10_ARCHIVES ?= ../shared/data/cifar10-jpg
CIFAR10_DIR      ?= data/cifar10-jpg
CIFAR10_LOSSLESS_ARCHIVE ?= ../shared/data/cifar10-lossless
CIFAR10_LOSSLESS_DIR     ?= data/cifar10-lossless

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-fast lint format bench fmnist-data cifar10-data \
	cifar10-lossless-data study-cifar10-cpu study-resnet20-cpu study-resnet20-lossless study-lowlatency-lossless study-lowlatency reproduce-fmnist compare-sj \
	bench-train device-bundle clean

help: ## Show the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## Create .venv and install rmp (editable) with its dev extras

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev,mlflow,tensorboard]' $(TORCH_PIN)
	touch $@

demo: setup ## The main job: default sweep on digits (train, convert, hard vs soft, T=1..512, plot)
	$(RMP) sweep

test: setup ## The whole test suite (what CI runs)
	$(BIN)/pytest -q

test-fast: setup ## Unit tests only (skips the slow end-to-end tests)
	$(BIN)/pytest -q -m "not slow"

lint: setup ## ruff check + format check
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

format: setup ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix src tests benchmarks scripts
	$(BIN)/ruff format src tests benchmarks scripts

bench: setup ## Simulator speed and memory benchmark (writes benchmarks/results/)
	$(BIN)/python benchmarks/bench_simulator.py

bench-train: setup ## ANN training speed on this CPU: fp32 vs bf16 autocast, NCHW vs channels_last
	$(BIN)/python benchmarks/bench_train_cpu.py

fmnist-data: ## Install Fashion-MNIST from Debian's package (needs root)
	@test -d $(FMNIST_PKG) || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)

cifar10-data: setup ## Verify + unpack the CIFAR-10 JPEG archives (CIFAR10_ARCHIVES) into CIFAR10_DIR
	@test -d $(CIFAR10_DIR)/train || $(RMP) unpack-cifar10 $(CIFAR10_ARCHIVES) $(CIFAR10_DIR)

# Lossless CIFAR-10 in the official pickle layout: checked against SHA256SUMS before anything is
# unpacked, unpacked beside the destination and moved into place, so a failed run leaves nothing.
cifar10-lossless-data: ## Verify + unpack lossless CIFAR-10 (CIFAR10_LOSSLESS_ARCHIVE) into CIFAR10_LOSSLESS_DIR
	@test -f $(CIFAR10_LOSSLESS_DIR)/cifar-10-batches-py/test_batch || { \
	  test -f $(CIFAR10_LOSSLESS_ARCHIVE)/SHA256SUMS || { \
	    echo "make cifar10-lossless-data: no SHA256SUMS in $(CIFAR10_LOSSLESS_ARCHIVE); set CIFAR10_LOSSLESS_ARCHIVE=DIR (the folder holding cifar-10-python.tar.xz)" >&2; exit 2; }; \
	  ( cd $(CIFAR10_LOSSLESS_ARCHIVE) && sha256sum --check --quiet --strict SHA256SUMS ) || { \
	    echo "make cifar10-lossless-data: $(CIFAR10_LOSSLESS_ARCHIVE) does not match its SHA256SUMS; nothing unpacked" >&2; exit 2; }; \
	  mkdir -p $(CIFAR10_LOSSLESS_DIR) && tmp=$$(mktemp -d $(CIFAR10_LOSSLESS_DIR)/.unpack.XXXXXX) && \
	  tar -xJf $(CIFAR10_LOSSLESS_ARCHIVE)/cifar-10-python.tar.xz -C $$tmp && \
	  mv $$tmp/cifar-10-batches-py $(CIFAR10_LOSSLESS_DIR)/ && rmdir $$tmp && \
	  echo "$(CIFAR10_LOSSLESS_DIR)/cifar-10-batches-py"; }

study-resnet20-lossless: setup cifar10-lossless-data ## The paper's ResNet-20 row on lossless CIFAR-10: train (2.0-3.4 h measured on 2 cores), paper pairing, percentile route
	RMP=$(RMP) ROOT=$(CIFAR10_LOSSLESS_DIR) scripts/study_resnet20_lossless.sh

study-lowlatency-lossless: setup cifar10-lossless-data ## QCFS ResNet-20 + signed / burst / COS / SRP at T = 1..64 on lossless CIFAR-10 (after study-resnet20-lossless)
	RMP=$(RMP) ROOT=$(CIFAR10_LOSSLESS_DIR) scripts/study_lowlatency_lossless.sh

study-cifar10-cpu: cifar10-data ## CPU-scale CIFAR-10 study (2 cores: ~35 min training + ~13 min sweep)
	$(RMP) sweep experiment=cifar10_vgg11_cpu dataset.root=$(CIFAR10_DIR)

study-resnet20-cpu: cifar10-data ## The paper's ResNet-20 row on 2 CPU cores (~2 h training, ~2 h sweep on one thread)
	$(RMP) sweep experiment=cifar10_resnet20_cpu dataset.root=$(CIFAR10_DIR)

study-lowlatency: setup fmnist-data ## Low-latency methods side by side on Fashion-MNIST, T = 1..64
	$(RMP) sweep experiment=fashion_mnist_lowlatency

reproduce-fmnist: setup fmnist-data ## The paper's claims at CPU scale on Fashion-MNIST (~25 min on 2 cores)
	$(RMP) sweep experiment=fashion_mnist_reproduce

compare-sj: setup ## rmp's converter vs SpikingJelly's on one checkpoint (CKPT=RUN/ann/model.pt, ~6 min)
	@test -n "$(CKPT)" || { echo "make compare-sj: set CKPT=<run dir>/ann/model.pt, e.g. from make reproduce-fmnist" >&2; exit 2; }
	$(BIN)/python benchmarks/compare_spikingjelly.py experiment=fashion_mnist_reproduce ckpt=$(CKPT)

# What a GPU machine without Hydra needs, inside the repo so that a call can carry it: the
# pure-Python packages rmp needs beyond PyTorch (the versions of .venv) and the CIFAR-10 archives.
device-bundle: setup ## Fill .devdata/ (site/ + cifar10-jpg/) for scripts/gpu_reproduce_cifar10.sh on a GPU call
	rm -rf .devdata/site
	$(BIN)/pip install -q --no-deps --target .devdata/site \
	  $$($(BIN)/pip freeze | grep -i -E '^(hydra-core|omegaconf|antlr4-python3-runtime)==')
	mkdir -p .devdata/cifar10-jpg
	cp $(CIFAR10_ARCHIVES)/train.tar.xz $(CIFAR10_ARCHIVES)/test.tar.xz \
	  $(CIFAR10_ARCHIVES)/SHA256SUMS .devdata/cifar10-jpg/
	@du -sh .devdata

clean: ## Remove caches (keeps .venv and outputs/)
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info
