#!/usr/bin/env bash
# Assemble a LibTorch directory from the PyPI wheels of torch (no other download source).
#
#   scripts/libtorch.sh [cpu|cuda]     prints the LibTorch directory on stdout
#
# cpu  (default): libtorch_cpu + libc10 + headers, with the two small CUDA runtime wheels that
#       libtorch_cpu.so links against; libtorch.so is replaced by an empty shared library because
#       the wheel's one pulls in libtorch_cuda.so.
# cuda: the full wheel set (torch with its nvidia-* dependencies), for GPU machines and images.
#
# The result is cached under ${VOXEL_CACHE:-~/.cache/voxel}; a second call only prints the path.
set -euo pipefail

TORCH_VERSION=2.13.0
CUDA_TOOLKIT_VERSION=13.0.3
# The wheel tags are pinned so that the same files are chosen whatever Python runs pip.
PIP_PLATFORM=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi none
              --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
              --platform manylinux_2_25_x86_64 --platform manylinux_2_17_x86_64
              --platform manylinux2014_x86_64 --platform any)

variant=${1:-${VOXEL_LIBTORCH_VARIANT:-cpu}}
case "$variant" in cpu|cuda) ;; *) echo "libtorch.sh: unknown variant '$variant' (cpu|cuda)" >&2; exit 2;; esac

cache=${VOXEL_CACHE:-$HOME/.cache/voxel}
dest="$cache/libtorch-$TORCH_VERSION-$variant"
if [[ -f "$dest/.complete" ]]; then
  echo "$dest"
  exit 0
fi

wheels="$cache/wheels"
mkdir -p "$wheels"
log() { echo "libtorch.sh: $*" >&2; }

python=${PYTHON:-python3}
if [[ "$variant" == cpu ]]; then
  log "downloading torch==$TORCH_VERSION and the CUDA runtime wheels it links against"
  "$python" -m pip download -q --no-deps "${PIP_PLATFORM[@]}" -d "$wheels" "torch==$TORCH_VERSION" >&2
  "$python" -m pip download -q "${PIP_PLATFORM[@]}" -d "$wheels" \
    "cuda-toolkit[cudart,cupti]==$CUDA_TOOLKIT_VERSION" >&2
else
  log "downloading torch==$TORCH_VERSION with all its CUDA wheels (several GB)"
  "$python" -m pip download -q "${PIP_PLATFORM[@]}" -d "$wheels" "torch==$TORCH_VERSION" >&2
fi

tmp="$dest.partial"
rm -rf "$tmp"
mkdir -p "$tmp/lib" "$tmp/include"

"$python" - "$wheels" "$tmp" "$variant" "$TORCH_VERSION" <<'PY'
import glob, os, shutil, sys, zipfile

wheels, out, variant, version = sys.argv[1:5]
torch_whl = glob.glob(os.path.join(wheels, f"torch-{version}-*.whl"))
if len(torch_whl) != 1:
    sys.exit(f"expected one torch-{version} wheel in {wheels}, found {torch_whl}")

CUDA_ONLY = ("libtorch_cuda", "libc10_cuda", "libcaffe2_nvrtc", "libtorch_nvshmem")

def extract(whl, prefix, target, keep=lambda name: True):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            rel = info.filename[len(prefix):]
            if not keep(rel):
                continue
            path = os.path.join(target, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with z.open(info) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)

def keep_lib(rel):
    name = os.path.basename(rel)
    if "/" in rel or name == "libtorch_python.so":
        return False
    return variant == "cuda" or not name.startswith(CUDA_ONLY)

extract(torch_whl[0], "torch/lib/", os.path.join(out, "lib"), keep_lib)
extract(torch_whl[0], "torch/include/", os.path.join(out, "include"))
# torch-sys expects share/cmake to be optional; the headers and libraries are all it needs.
for whl in glob.glob(os.path.join(wheels, "nvidia_*.whl")):
    with zipfile.ZipFile(whl) as z:
        names = [n for n in z.namelist() if "/lib/" in n and ".so" in os.path.basename(n)]
    for name in names:
        prefix = name[: name.index("/lib/") + len("/lib/")]
        extract(whl, prefix, os.path.join(out, "lib"), lambda rel: "/" not in rel)
PY

if [[ "$variant" == cpu ]]; then
  # The wheel's libtorch.so only re-exports libtorch_cpu and libtorch_cuda; an empty library
  # keeps "-ltorch" resolvable without dragging the CUDA libraries in.
  rm -f "$tmp/lib/libtorch.so"
  echo "" | ${CC:-cc} -shared -x c - -o "$tmp/lib/libtorch.so"
fi

echo "$TORCH_VERSION $variant" > "$tmp/.complete"
rm -rf "$dest"
mv "$tmp" "$dest"
log "LibTorch $TORCH_VERSION ($variant) ready in $dest"
echo "$dest"
