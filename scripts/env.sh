# Sourced by the Makefile and .ci/run: where caches live and how to find LibTorch.
#   source scripts/env.sh
# VOXEL_CACHE (default ~/.cache/voxel) holds the LibTorch directories, the pip wheels and the
# cargo target directory, outside the clone so that a fresh clone builds incrementally.
export VOXEL_CACHE="${VOXEL_CACHE:-$HOME/.cache/voxel}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$VOXEL_CACHE/target}"
LIBTORCH="$(bash "$(dirname "${BASH_SOURCE[0]}")/libtorch.sh" "${VOXEL_LIBTORCH_VARIANT:-cpu}")"
export LIBTORCH
# tch checks for an exact LibTorch version string that the PyPI wheel does not carry.
export LIBTORCH_BYPASS_VERSION_CHECK=1
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
