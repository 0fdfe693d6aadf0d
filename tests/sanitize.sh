#!/usr/bin/env bash
# Sanitizer stage: builds libkvfold.so with KVFOLD_SANITIZE (default address,undefined; its own build
# folder, build/sanitize-*, so the normal library is never replaced) and runs under it
#   (a) the native unit tests (ffi/tests, built with the same sanitizers), and
#   (b) the dispose, abort and hostile-input tests, then the other suites that drive the library
#       (forward, LoRA, caches, training), with the sanitized library loaded into Deno.
# Any ASan or UBSan report fails the test it happens in. Ends with one line "sanitize: N passed, N failed"
# and exits nonzero on any failure. Usage: tests/sanitize.sh [extra deno test args]
set -uo pipefail
cd "$(dirname "$0")/.."

export KVFOLD_SANITIZE="${KVFOLD_SANITIZE:-address,undefined}"
export KVFOLD_CUDA=0 NO_COLOR=1
deno="${DENO:-$(npx -y deno@2.9.6 eval 'console.log(Deno.execPath())' 2>/dev/null)}"
if [[ ! -x "$deno" ]]; then
  echo "sanitize: cannot find the deno binary (set DENO)" >&2
  echo "sanitize: 0 passed, 1 failed"
  exit 1
fi

# Build first, without the sanitizer runtime preloaded (the compiler need not run under it).
if ! "$deno" eval 'import { ensureNativeLibrary } from "./src/_native_build.ts"; await ensureNativeLibrary();'; then
  echo "sanitize: the sanitized build failed" >&2
  echo "sanitize: 0 passed, 1 failed"
  exit 1
fi

# A sanitized shared library loaded into a process that was not built with ASan needs the runtime
# first in the library list, and libstdc++ loaded at startup too (else ASan's __cxa_throw interceptor
# finds no real one and the first C++ exception aborts). Deno and V8 leak by design: no leak checks.
preload=()
if [[ "$KVFOLD_SANITIZE" == *address* ]]; then
  preload+=("$(g++ -print-file-name=libasan.so)" "$(readlink -f "$(g++ -print-file-name=libstdc++.so)")")
fi
if [[ "$KVFOLD_SANITIZE" == *undefined* && "$KVFOLD_SANITIZE" != *address* ]]; then
  preload+=("$(g++ -print-file-name=libubsan.so)")
fi
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:print_summary=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

# KVFOLD_SANITIZE_TESTS="a_test.ts b_test.ts" runs other files instead.
read -r -a tests <<<"${KVFOLD_SANITIZE_TESTS:-tests/native_units_test.ts tests/hostile_lifetime_test.ts \
tests/hostile_truncated_weights_test.ts tests/errors_test.ts tests/generate_test.ts tests/forward_test.ts \
tests/lora_test.ts tests/lococo_cache_test.ts tests/lococo_heads_test.ts tests/embeddings_test.ts \
tests/compressor_test.ts tests/train_test.ts tests/lococo_train_test.ts tests/model_test.ts \
tests/gguf_hostile_test.ts tests/gguf_load_test.ts tests/train_replicas_test.ts}"
# One Deno process per file: a sanitizer report stops the process it happens in, and the other files
# still run and count.
total_pass=0
total_fail=0
for t in "${tests[@]}"; do
  log="$(mktemp)"
  LD_PRELOAD="$(IFS=:; echo "${preload[*]}")" "$deno" test -A "$t" "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  summary="$(grep -E '^(ok|FAILED) \| [0-9]+ passed' "$log" | tail -n 1)"
  if grep -qE 'ERROR: AddressSanitizer|runtime error:' "$log"; then
    echo "sanitize: $t: a sanitizer report was printed above" >&2
  fi
  rm -f "$log"
  if [[ -z "$summary" ]]; then
    echo "sanitize: $t: no Deno test summary (exit $status; a sanitizer stopped the process?)" >&2
    total_fail=$(( total_fail + 1 ))
    continue
  fi
  passed="$(sed -E 's/.*\| ([0-9]+) passed.*/\1/' <<<"$summary")"
  failed="$(sed -E 's/.*\| ([0-9]+) failed.*/\1/' <<<"$summary")"
  if [[ "$status" != 0 && "$failed" == 0 ]]; then failed=1; fi
  total_pass=$(( total_pass + passed ))
  total_fail=$(( total_fail + failed ))
done
# ThreadSanitizer, for the code several threads run at once (gradient replicas beside each other, a reader
# and the engine's pool): ffi/tests/train_replicas_threads_test.cpp through kvfold.h, built with
# -fsanitize=thread against a library built the same way (build/sanitize-thread). One check.
# KVFOLD_SANITIZE_THREAD=0 skips it.
if [[ "${KVFOLD_SANITIZE_THREAD:-1}" != "0" ]]; then
  tdir="$(mktemp -d)"
  tlib="$(KVFOLD_SANITIZE=thread "$deno" eval \
    'import { ensureNativeLibrary } from "./src/_native_build.ts"; console.log(await ensureNativeLibrary());')"
  if [[ -f "$tlib" ]] && g++ -std=c++17 -O1 -g -fsanitize=thread -pthread -Iffi/include \
    ffi/tests/train_replicas_threads_test.cpp "$tlib" "-Wl,-rpath,$(dirname "$tlib")" -o "$tdir/replicas"; then
    # setarch -R: TSan refuses some address-space layouts that full randomisation produces.
    TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1" LD_PRELOAD= setarch "$(uname -m)" -R "$tdir/replicas" \
      2>&1 | tee "$tdir/log"
    if [[ "${PIPESTATUS[0]}" == 0 ]] && ! grep -q 'WARNING: ThreadSanitizer' "$tdir/log"; then
      echo "sanitize: thread: ok"
      total_pass=$(( total_pass + 1 ))
    else
      echo "sanitize: thread: the replica test failed or ThreadSanitizer reported a race (above)" >&2
      total_fail=$(( total_fail + 1 ))
    fi
  else
    echo "sanitize: thread: the ThreadSanitizer build failed" >&2
    total_fail=$(( total_fail + 1 ))
  fi
  rm -rf "$tdir"
fi
echo "sanitize: $total_pass passed, $total_fail failed"
exit $(( total_fail > 0 ? 1 : 0 ))
