# Everything a user or CI runs. Each target sets up what it needs (LibTorch from PyPI,
# cached under $VOXEL_CACHE, default ~/.cache/voxel).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
ENV := source scripts/env.sh &&
DEMO_STATE ?= out/demo

.PHONY: setup build test lint demo experiment bench control-plane crds clean

## setup: download and assemble LibTorch (CPU) from PyPI
setup:
	@$(ENV) echo "LibTorch in $$LIBTORCH"

## build: compile every crate and test
build: setup
	$(ENV) cargo build --workspace --all-targets

## test: run every test (unit, trainer on real MRI, command line, local mode end to end, the
## CRDs on a real kube-apiserver built from the Go modules)
test: setup
	$(ENV) cargo build --workspace --bins
	$(ENV) bash scripts/with-control-plane.sh cargo test --workspace --no-fail-fast

## lint: formatting and clippy with warnings as errors
lint: setup
	$(ENV) cargo fmt --all --check
	$(ENV) cargo clippy --workspace --all-targets -- -D warnings

## demo: local mode on the shipped MRI: a 3-fold cross-validation ensembled and published as
## version 1, a single model compared with it (version 2), an ensemble of both; then the registry
demo: setup
	$(ENV) cargo build -p voxel-trainer --bin voxel-trainer -p voxel-operator --bin voxel
	rm -rf $(DEMO_STATE)
	$(ENV) for manifest in cross-validation single-model ensemble; do \
		"$$CARGO_TARGET_DIR/debug/voxel" run --state $(DEMO_STATE) \
			-f examples/hippocampus/$$manifest.yaml || exit 1; done
	$(ENV) "$$CARGO_TARGET_DIR/debug/voxel" models --state $(DEMO_STATE) list
	$(ENV) "$$CARGO_TARGET_DIR/debug/voxel" models --state $(DEMO_STATE) show hippocampus@production

## experiment: train and evaluate the single example Experiment with voxel-trainer alone
experiment: setup
	$(ENV) cargo build -p voxel-trainer --bin voxel-trainer
	rm -rf out/hippocampus
	$(ENV) "$$CARGO_TARGET_DIR/debug/voxel-trainer" train \
		--config examples/hippocampus/experiment.yaml --output out/hippocampus

## bench: UNet3D training step, PyTorch eager against voxel-trainer, side by side
bench: setup
	$(ENV) bash bench/train_step.sh

## control-plane: build (or reuse) the test control plane: etcd, kube-apiserver,
## kube-controller-manager, kube-scheduler, kubectl; and the S3-compatible test server
control-plane:
	bash scripts/control-plane.sh build
	bash scripts/control-plane.sh tools
	bash scripts/s3-server.sh build

## crds: regenerate the CRDs committed under charts/voxel/crds from the Rust types
crds: setup
	$(ENV) cargo run -q -p voxel-operator --bin voxel -- crds --output-dir charts/voxel/crds

clean:
	rm -rf out .voxel
