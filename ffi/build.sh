#!/usr/bin/env bash
# Builds libkvfold.so from ffi/src (C++17) and, when nvcc is found, the CUDA backend from ffi/cuda.
# Usage: ffi/build.sh OUT_DIR
# Env: CXX (default g++), KVFOLD_CXXFLAGS (extra flags), KVFOLD_NATIVE=0 to skip -march=native,
#      NVCC (default nvcc), KVFOLD_CUDA (auto (default): build the CUDA backend when nvcc is found;
#      0: never; 1: require it), KVFOLD_CUDA_ARCHS (default "80 86 89 90": real SASS for each, plus PTX
#      of the last so newer GPUs can JIT it), KVFOLD_NVCCFLAGS (extra nvcc flags),
#      KVFOLD_SANITIZE (e.g. "address,undefined": a sanitizer build, -O1 -g, CPU backend only; its
#      callers put it in its own OUT_DIR, and a process loading it needs LD_PRELOAD of the runtime,
#      see tests/sanitize.sh).
# The CUDA runtime is linked statically (libcudart_static.a) and cuBLAS is only dlopen'ed at run time,
# so the library loads on machines without any CUDA library; the CPU backend is always built.
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
sanitize="${KVFOLD_SANITIZE:-}"
opt=(-O3)
link_san=()
if [[ -n "$sanitize" ]]; then
  if [[ ! "$sanitize" =~ ^[a-z,]+$ ]]; then
    echo "kvfold build: KVFOLD_SANITIZE=$sanitize is not a comma-separated list of sanitizers (e.g. address,undefined)" >&2
    exit 2
  fi
  # -fno-sanitize-recover: a UBSan finding stops the process like an ASan one, so tests cannot miss it.
  opt=(-O1 -g -fno-omit-frame-pointer "-fsanitize=$sanitize" "-fno-sanitize-recover=all")
  link_san=("-fsanitize=$sanitize")
fi
flags=(-std=c++17 "${opt[@]}" -fPIC -fvisibility=hidden -pthread -Wall -Wextra -Wno-unused-parameter "${arch[@]}"
  -I"$here/include" ${KVFOLD_CXXFLAGS:-})

# ---- CUDA: decide before compiling anything, since the C++ side needs KVFOLD_HAVE_CUDA ----
nvcc="${NVCC:-nvcc}"
cuda_mode="${KVFOLD_CUDA:-auto}"
nvcc_found="no"
if command -v "$nvcc" >/dev/null 2>&1; then nvcc_found="$("$nvcc" --version | tail -n 2 | head -n 1)"; fi
cuda_sources=()
if [[ -d "$here/cuda" ]]; then mapfile -t cuda_sources < <(find "$here/cuda" -maxdepth 1 -name '*.cu' | sort); fi
build_cuda=false
if [[ "$cuda_mode" != "0" && "$nvcc_found" != "no" && ${#cuda_sources[@]} -gt 0 && -z "$sanitize" ]]; then
  build_cuda=true
fi
if [[ "$cuda_mode" == "1" && -n "$sanitize" ]]; then
  echo "kvfold build: KVFOLD_SANITIZE builds the CPU backend only; unset KVFOLD_CUDA=1" >&2
  exit 2
fi
if [[ "$cuda_mode" == "1" && "$build_cuda" != true ]]; then
  echo "kvfold build: KVFOLD_CUDA=1 but nvcc ($nvcc) was not found or ffi/cuda has no sources" >&2
  exit 2
fi
cuda_archs=(${KVFOLD_CUDA_ARCHS:-80 86 89 90})
nvcc_flags=()
cuda_link=()
if [[ "$build_cuda" == true ]]; then
  # The toolkit's lib64 beside nvcc (nvcc may be a symlink into it).
  cuda_root="$(cd "$(dirname "$(readlink -f "$(command -v "$nvcc")")")/.." && pwd)"
  cuda_lib=""
  for d in "$cuda_root/lib64" "$cuda_root/targets/x86_64-linux/lib" "$cuda_root/targets/sbsa-linux/lib" /usr/local/cuda/lib64; do
    if [[ -f "$d/libcudart_static.a" ]]; then cuda_lib="$d"; break; fi
  done
  if [[ -z "$cuda_lib" ]]; then
    echo "kvfold build: nvcc found, but no libcudart_static.a beside it ($cuda_root); set KVFOLD_CUDA=0 to build without CUDA" >&2
    exit 2
  fi
  gencode=()
  last="${cuda_archs[${#cuda_archs[@]}-1]}"
  for a in "${cuda_archs[@]}"; do
    if [[ "$a" == "$last" ]]; then gencode+=(-gencode "arch=compute_$a,code=[sm_$a,compute_$a]")
    else gencode+=(-gencode "arch=compute_$a,code=sm_$a"); fi
  done
  nvcc_flags=(-std=c++17 -O3 -ccbin "$cxx" -Xcompiler -fPIC -Xcompiler -fvisibility=hidden -Xcompiler -Wall
    -I"$here/include" "${gencode[@]}" ${KVFOLD_NVCCFLAGS:-})
  # --exclude-libs keeps the static runtime's symbols out of libkvfold.so's exports.
  cuda_link=(-L"$cuda_lib" -Wl,--exclude-libs,ALL -lcudart_static -ldl -lrt -lpthread)
  flags+=(-DKVFOLD_HAVE_CUDA)
  arch_list="$(printf 'sm_%s ' "${cuda_archs[@]}")"
  echo "kvfold build: nvcc found ($nvcc_found); building the CUDA backend for ${arch_list% }" >&2
fi

# Compile translation units in parallel, one job per core; the CUDA ones first (the slowest).
jobs="$(nproc 2>/dev/null || echo 2)"
pids=()
start=$SECONDS
run() {
  "$@" &
  pids+=($!)
  if (( ${#pids[@]} >= jobs )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
}
if [[ "$build_cuda" == true ]]; then
  for src in "${cuda_sources[@]}"; do
    run "$nvcc" "${nvcc_flags[@]}" -c "$src" -o "$obj/cuda_$(basename "${src%.cu}").o"
  done
fi
for src in "$here"/src/*.cpp; do
  run "$cxx" "${flags[@]}" -c "$src" -o "$obj/$(basename "${src%.cpp}").o"
done
for p in "${pids[@]}"; do wait "$p"; done
"$cxx" -shared -pthread "${link_san[@]}" "$obj"/*.o "${cuda_link[@]}" -o "$out/libkvfold.so.tmp"
mv -f "$out/libkvfold.so.tmp" "$out/libkvfold.so"
archs_json=""
if [[ "$build_cuda" == true ]]; then
  for a in "${cuda_archs[@]}"; do archs_json+="${archs_json:+,}\"sm_$a\""; done
fi
printf '{"cxx":"%s","march_native":%s,"nvcc":"%s","cuda_built":%s,"cuda_archs":[%s],"sanitize":"%s","build_seconds":%d}\n' \
  "$("$cxx" --version | head -n 1)" "$([[ ${#arch[@]} -gt 0 ]] && echo true || echo false)" "$nvcc_found" \
  "$build_cuda" "$archs_json" "$sanitize" "$(( SECONDS - start ))" > "$out/build-info.json"
echo "kvfold build: wrote $out/libkvfold.so ($(( SECONDS - start )) s, cuda: $build_cuda)" >&2
