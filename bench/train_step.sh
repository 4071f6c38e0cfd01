#!/usr/bin/env bash
# Times one UNet3D training step (forward, loss, backward, Adam update) in PyTorch eager and in
# voxel-trainer, in the same run, and prints both medians with the ratios. See bench/README.md.
#
#   make bench          (or: source scripts/env.sh && bash bench/train_step.sh)
#
# Environment:
#   BENCH_WARMUP   untimed steps before the timed ones (default 3)
#   BENCH_STEPS    timed steps (default 10)
#   BENCH_THREADS  intra-op threads, the same on both sides (default: every core, nproc)
#   BENCH_SEED     seed of the weights and of the random batch (default 0)
#   BENCH_BF16     auto | yes | no: also time bfloat16 convolutions. auto times them only where
#                  oneDNN has bfloat16 convolutions (CPUs with AVX-512); elsewhere LibTorch falls
#                  back to a single-threaded reference convolution that takes minutes a step.
#
# PyTorch comes from PyPI into a virtual environment cached in $VOXEL_CACHE/bench-venv.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${LIBTORCH:-}" ]]; then
  source scripts/env.sh
fi

TORCH_VERSION=2.13.0
warmup=${BENCH_WARMUP:-3}
steps=${BENCH_STEPS:-10}
threads=${BENCH_THREADS:-$(nproc)}
seed=${BENCH_SEED:-0}
bf16=${BENCH_BF16:-auto}
case "$bf16" in auto|yes|no) ;; *) echo "train_step.sh: BENCH_BF16 is '$bf16', expected auto, yes or no" >&2; exit 2;; esac

log() { echo "train_step.sh: $*" >&2; }

venv="$VOXEL_CACHE/bench-venv"
# Written last, so that an interrupted install is redone rather than used.
venv_complete="$venv/.voxel-torch-$TORCH_VERSION"
if [[ ! -f "$venv_complete" ]]; then
  log "installing torch==$TORCH_VERSION with its CUDA wheels (a few GB) into $venv"
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    --find-links "$VOXEL_CACHE/wheels" "torch==$TORCH_VERSION"
  touch "$venv_complete"
fi
python="$venv/bin/python"

log "building the voxel-trainer side"
cargo build -q -p voxel-trainer --example bench_train_step
voxel="$CARGO_TARGET_DIR/debug/examples/bench_train_step"

if [[ "$bf16" == auto ]]; then
  # A private PyTorch test hook; if it ever disappears, bf16 is simply not timed by default.
  if [[ "$("$python" -c 'import torch; print(torch.ops.mkldnn._is_mkldnn_bf16_supported())' \
        2>/dev/null)" == True ]]; then
    bf16=yes
  else
    bf16=no
    log "skipping bf16: oneDNN has no bfloat16 convolution on this CPU (BENCH_BF16=yes forces it)"
  fi
fi

# Both sides read their thread count from the command line; OpenMP gets the same number so that
# no library picks its own.
export OMP_NUM_THREADS="$threads"
common=(--warmup "$warmup" --steps "$steps" --threads "$threads" --seed "$seed")
results=()
measure() {
  local line
  line=$("$@" "${common[@]}")
  echo "$line"
  results+=("$line")
}

echo "UNet3D training step, patch 64^3, batch 2, Adam; $warmup warm-up + $steps timed steps," \
  "$threads threads"
measure "$python" bench/train_step.py --precision fp32
measure "$voxel" --precision fp32
measure "$python" bench/train_step.py --precision fp32 --channels-last
if [[ "$bf16" == yes ]]; then
  measure "$python" bench/train_step.py --precision bf16 --channels-last
  measure "$voxel" --precision bf16
fi

# Rows: fp32 on both sides, then the fastest mode each side has. Ratios are ours / PyTorch's
# step time, and ours / PyTorch's throughput (patches a second), which is the inverse.
printf '%s\n' "${results[@]}" | awk '
  function field(name,   i) {
    for (i = 3; i <= NF; i++) if (index($i, name "=") == 1) return substr($i, length(name) + 2)
  }
  {
    side = $1; mode = $2; ms = field("median_ms") + 0
    params[side] = field("parameters")
    if (mode == "fp32") fp32[side] = ms
    if (!(side in best) || ms < best[side]) { best[side] = ms; best_mode[side] = mode }
  }
  function row(label, pt_mode, pt_ms, our_mode, our_ms) {
    printf "%-8s %-23s %10.1f   %-6s %10.1f   %7.2f   %10.2f\n",
      label, pt_mode, pt_ms, our_mode, our_ms, our_ms / pt_ms, pt_ms / our_ms
  }
  END {
    if (params["pytorch"] != params["voxel"])
      printf "WARNING: the networks differ: %s parameters in PyTorch, %s in voxel-trainer\n",
        params["pytorch"], params["voxel"]
    print ""
    printf "%-8s %-23s %10s   %-6s %10s   %7s   %10s\n", "", "PyTorch mode", "median ms",
      "ours", "median ms", "time", "throughput"
    printf "%-8s %-23s %10s   %-6s %10s   %7s   %10s\n", "", "", "", "", "", "ours/PT", "ours/PT"
    row("fp32", "fp32", fp32["pytorch"], "fp32", fp32["voxel"])
    row("fastest", best_mode["pytorch"], best["pytorch"], best_mode["voxel"], best["voxel"])
  }'
