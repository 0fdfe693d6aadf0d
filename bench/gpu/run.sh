#!/usr/bin/env bash
# bench/gpu — the one call a GPU machine runs (no network, no Deno needed: Python 3 with numpy and
# ctypes drives libkvfold.so's C ABI directly).
#
#   bash bench/gpu/run.sh [--quick] [--skip-7b] [--only-check] [--long]
#
# Within the 10-minute limit of one device call, run the checks and the timings as two calls:
#   bash bench/gpu/run.sh --only-check     # build (~1-2 min), kernel tests, every correctness check
#   bash bench/gpu/run.sh --only-time      # (build kept) the timings
#
# 1. builds libkvfold.so with the CUDA backend (KVFOLD_CUDA=1, all cores) into build/gpu/;
# 2. checks the cuda engine against the cpu engine of the same library on random fixtures (tiny
#    variants: GQA, qwen2 biases, mistral sliding window, llama3 rope scaling, head_dim 128 and 256,
#    K not a multiple of 8; the `small` preset), with cuBLAS and with kvfold's own GEMM kernels:
#    prefill logits, decode, prefix embeddings + hidden states, KV cache contents, chunked prefill,
#    split-KV decode over long contexts, a mixed-adapter batch decode (LoRA), each as
#    ||cuda - cpu|| / ||cpu|| against a bf16 / f16 band;
# 3. times batch-1 decode (graph and eager), prefill, adapter switch, a mixed-adapter batch and LoCoCo
#    prefill at 32k (128k with --long) for `small` and a 7B-shaped random bf16 model, beside the
#    ceilings measured in the same run (device-to-device copy bandwidth; a large matrix product's rate).
# Writes $OUT/gpu.json (or bench/results/gpu.json) and prints a table last.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-bench/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>&1 || true
echo "nvcc: $(nvcc --version | tail -n 2 | head -n 1)"
# Builds are kept between calls on one machine: rebuild only when something under ffi/ changed.
fresh() { [[ -f "$1" ]] && [[ -z "$(find ffi -newer "$1" -type f -print -quit)" ]]; }
t0=$SECONDS
if fresh build/gpu/libkvfold.so; then echo "build: build/gpu/libkvfold.so is up to date"; else
  KVFOLD_CUDA=1 bash ffi/build.sh build/gpu 2>&1 | tee "$out/build.log" | tail -n 3
  echo "build: $(( SECONDS - t0 )) s"
fi
if command -v cuobjdump >/dev/null 2>&1; then
  echo "cubins in libkvfold.so: $(cuobjdump --list-elf build/gpu/libkvfold.so 2>/dev/null | grep -o 'sm_[0-9]*' | sort | uniq -c | tr '\n' ' ')"
fi
# Kernel-level checks first (each kernel against a float64 reference), so a failure points at a kernel.
t0=$SECONDS
if ! fresh build/gpu/cuda_kernels_test; then
  nvcc -std=c++17 -O2 -arch=native -DKVFOLD_HAVE_CUDA -Iffi/include ffi/tests/cuda_kernels_test.cu ffi/cuda/*.cu \
    ffi/src/*.cpp -ldl -lpthread -o build/gpu/cuda_kernels_test
  echo "kernel test built: $(( SECONDS - t0 )) s"
fi
# cuBLAS: the pip wheel's copy when the system has none on the loader path.
if [[ -z "${KVFOLD_CUBLAS:-}" ]] && ! ldconfig -p 2>/dev/null | grep -q 'libcublas.so'; then
  cand="$(python3 -c 'import glob, site; c = [f for d in site.getsitepackages() for f in glob.glob(d + "/nvidia/**/libcublas.so.1[0-9]", recursive=True)]; print(sorted(c)[-1] if c else "")' 2>/dev/null || true)"
  if [[ -n "$cand" ]]; then export KVFOLD_CUBLAS_FOUND="$cand"; echo "cuBLAS: $cand"; fi
fi
if [[ " $* " != *" --only-time "* ]]; then
KVFOLD_CUBLAS="${KVFOLD_CUBLAS:-0}" build/gpu/cuda_kernels_test 2>&1 | tee "$out/kernels.log" | grep -v '^ok' || true
if [[ -n "${KVFOLD_CUBLAS_FOUND:-}${KVFOLD_CUBLAS:-}" ]]; then
  KVFOLD_CUBLAS="${KVFOLD_CUBLAS:-$KVFOLD_CUBLAS_FOUND}" build/gpu/cuda_kernels_test 2>&1 | tee "$out/kernels_cublas.log" | grep -v '^ok' || true
fi
fi
PYTHONUNBUFFERED=1 python3 bench/gpu/bench.py --lib build/gpu/libkvfold.so --out "$out" "$@" 2>&1 | tee "$out/bench.log"
