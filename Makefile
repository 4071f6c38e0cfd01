# Everything a user or CI runs. Each target sets up what it needs (LibTorch from PyPI,
# cached under $VOXEL_CACHE, default ~/.cache/voxel).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
ENV := source scripts/env.sh &&
DEMO_STATE ?= out/demo

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

## demo: cross-validate the hippocampus U-Net in local mode, publish it, then train a wider
## variant, compare it with version 1 and publish it too
demo: setup
	$(ENV) cargo build -p voxel-trainer --bin voxel-trainer -p voxel-operator --bin voxel
	rm -rf $(DEMO_STATE)
	$(ENV) "$$CARGO_TARGET_DIR/debug/voxel" run --state $(DEMO_STATE) \
		-f examples/hippocampus/cross-validation.yaml
	$(ENV) "$$CARGO_TARGET_DIR/debug/voxel" run --state $(DEMO_STATE) \
		-f examples/hippocampus/cross-validation-wide.yaml
	$(ENV) "$$CARGO_TARGET_DIR/debug/voxel" models --state $(DEMO_STATE) list
	$(ENV) "$$CARGO_TARGET_DIR/debug/voxel" models --state $(DEMO_STATE) show hippocampus@production

## bench: UNet3D training step, PyTorch eager against voxel-trainer, side by side
bench: setup
	$(ENV) bash bench/train_step.sh

clean:
	rm -rf out .voxel
