# Everything a user or CI runs. Each target sets up what it needs (LibTorch from PyPI,
# cached under $VOXEL_CACHE, default ~/.cache/voxel).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
ENV := source scripts/env.sh &&
DEMO_OUT ?= out/hippocampus

.PHONY: setup build test lint demo bench crds clean

## setup: download and assemble LibTorch (CPU) from PyPI
setup:
	@$(ENV) echo "LibTorch in $$LIBTORCH"

## build: compile every crate and test
build: setup
	$(ENV) cargo build --workspace --all-targets

## test: run every test (unit, trainer on real MRI, command line)
test: setup
	$(ENV) cargo test --workspace --no-fail-fast

## lint: formatting and clippy with warnings as errors
lint: setup
	$(ENV) cargo fmt --all --check
	$(ENV) cargo clippy --workspace --all-targets -- -D warnings

## demo: train the example hippocampus model on the shipped MRI and evaluate it
demo: setup
	$(ENV) cargo build -p voxel-trainer --bin voxel-trainer
	rm -rf $(DEMO_OUT)
	$(ENV) "$$CARGO_TARGET_DIR/debug/voxel-trainer" train \
		--config examples/hippocampus/experiment.yaml --output $(DEMO_OUT)

## bench: UNet3D training step, PyTorch eager against voxel-trainer, side by side
bench: setup
	$(ENV) bash bench/train_step.sh

clean:
	rm -rf out
