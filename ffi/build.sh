#!/usr/bin/env bash
# Builds libkvfold.so from ffi/src with a C++17 compiler. Usage: ffi/build.sh OUT_DIR
# Env: CXX (default g++), KVFOLD_CXXFLAGS (extra flags), KVFOLD_NATIVE=0 to skip -march=native.
# The CUDA backend is compiled when nvcc is found and ffi/cuda/ has sources (a later step); the CPU
# backend is always built.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: ffi/build.sh OUT_DIR}"
mkdir -p "$out"
obj="$(mktemp -d "$out/obj.XXXXXX")"
trap 'rm -rf "$obj"' EXIT
cxx="${CXX:-g++}"
if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "kvfold build: no C++ compiler ($cxx) on PATH; install g++ (Debian: apt-get install g++)" >&2
  exit 2
fi
arch=()
if [[ "${KVFOLD_NATIVE:-1}" != "0" ]] && echo 'int main(){}' | "$cxx" -march=native -x c++ - -o /dev/null 2>/dev/null; then
  arch=(-march=native)
fi
flags=(-std=c++17 -O3 -fPIC -fvisibility=hidden -pthread -Wall -Wextra -Wno-unused-parameter "${arch[@]}"
  -I"$here/include" ${KVFOLD_CXXFLAGS:-})

nvcc_found="no"
if command -v nvcc >/dev/null 2>&1; then nvcc_found="$(nvcc --version | tail -n 2 | head -n 1)"; fi
cuda_sources=()
if [[ -d "$here/cuda" ]]; then mapfile -t cuda_sources < <(find "$here/cuda" -name '*.cu' | sort); fi
if [[ "$nvcc_found" != "no" && ${#cuda_sources[@]} -gt 0 ]]; then
  echo "kvfold build: nvcc found ($nvcc_found); CUDA sources present" >&2
fi

# Compile translation units in parallel, one job per core.
jobs="$(nproc 2>/dev/null || echo 2)"
pids=()
for src in "$here"/src/*.cpp; do
  "$cxx" "${flags[@]}" -c "$src" -o "$obj/$(basename "${src%.cpp}").o" &
  pids+=($!)
  if (( ${#pids[@]} >= jobs )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
"$cxx" -shared -pthread "$obj"/*.o -o "$out/libkvfold.so.tmp"
mv -f "$out/libkvfold.so.tmp" "$out/libkvfold.so"
printf '{"cxx":"%s","march_native":%s,"nvcc":"%s","cuda_built":false}\n' \
  "$("$cxx" --version | head -n 1)" "$([[ ${#arch[@]} -gt 0 ]] && echo true || echo false)" "$nvcc_found" \
  > "$out/build-info.json"
echo "kvfold build: wrote $out/libkvfold.so" >&2
