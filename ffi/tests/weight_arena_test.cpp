// weight_arena_test.cpp — where WeightArena puts a model's converted weights: 64-byte-aligned pieces,
// in order, from 2 MiB-aligned chunks advised for huge pages, and a clear error when memory runs out.
//
// Build and run:
//   g++ -std=c++17 -O2 -Wall -pthread -Iffi/include ffi/tests/weight_arena_test.cpp ffi/src/weight_arena.cpp
//       ffi/src/json.cpp ffi/src/safetensors.cpp ffi/src/model_config.cpp ffi/src/common.cpp -o build/weight_arena_test
//   build/weight_arena_test
#include <cstdint>
#include <fstream>

#include "../src/weight_arena.h"
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif
#include "model_files_fixtures.h"

using namespace kf;
using namespace kf_files_test;

namespace {

constexpr uintptr_t kHuge = uintptr_t(2) << 20;

uintptr_t addr(const void *p) { return reinterpret_cast<uintptr_t>(p); }

// The VmFlags line of the mapping of /proc/self/smaps that holds p ("" when none does).
std::string vm_flags_of(const void *p) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find('-')) {
      inside = addr(p) >= lo && addr(p) < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

void arena_tests() {
  {
    WeightArena a;
    check("arena: nothing handed out yet", a.last() == nullptr && a.used() == 0);
    a.reserve(size_t(10) << 20);
    // Sizes that are not multiples of 64 (a 1-row Q4_0 matrix of 96 values is 54 bytes).
    const size_t sizes[] = {54, 1536, 3 << 20, 100, 64, (5 << 20) + 7};
    uint8_t *prev = nullptr;
    size_t prev_n = 0;
    bool aligned = true, in_order = true;
    uint8_t *first = nullptr;
    for (size_t n : sizes) {
      uint8_t *p = a.alloc(n, "test pieces");
      std::memset(p, 0xA5, n);  // every byte is writable (the sanitizer build checks the bounds)
      if (!first) first = p;
      aligned &= addr(p) % WeightArena::kAlign == 0;
      if (prev) in_order &= p == prev + (prev_n + 63) / 64 * 64 + WeightArena::kRedzone;
      prev = p;
      prev_n = n;
    }
    check("arena: pieces are 64-byte aligned", aligned);
    check("arena: reserved pieces follow one another in one chunk", in_order);
    check("arena: the chunk starts on a 2 MiB boundary", addr(first) % kHuge == 0);
    check("arena: last() is the last piece", a.last() == prev);
#if defined(__SANITIZE_ADDRESS__)
    check("arena (sanitized): the byte past a piece is poisoned, the piece is not",
          __asan_address_is_poisoned(prev + prev_n) && !__asan_address_is_poisoned(prev + prev_n - 1) &&
              __asan_address_is_poisoned(first + 54) && !__asan_address_is_poisoned(first));
#endif
    check("arena: used() counts the padding",
          a.used() == 64 + 1536 + (3 << 20) + 128 + 64 + ((5 << 20) + 64) + 6 * WeightArena::kRedzone,
          std::to_string(a.used()));
    const std::string flags = vm_flags_of(first);
    // A kernel without transparent huge pages refuses the advice (harmless): nothing to see then.
    const bool thp = ::access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0;
    check("arena: the chunk is advised for huge pages (VmFlags hg)", !thp || flags.find(" hg") != std::string::npos,
          flags);
    // Past the reservation: a new chunk, aligned the same way.
    uint8_t *next = a.alloc(size_t(2) << 20, "test pieces");
    check("arena: a piece past the reservation starts a new 2 MiB-aligned chunk", addr(next) % kHuge == 0 &&
                                                                                     (next < first || next >= first + (10 << 20)));
    // Bigger than a default chunk: a chunk of its own, every byte usable.
    const size_t big = WeightArena::kChunkBytes + (3 << 20) + 1;
    uint8_t *b = a.alloc(big, "test pieces");
    b[0] = 1;
    b[big - 1] = 2;
    check("arena: a piece bigger than a chunk gets one of its size", addr(b) % kHuge == 0 && b[0] == 1 && b[big - 1] == 2);
  }
  expect_error("arena: an impossible size is OUT_OF_MEMORY naming what it was for", KF_ERR_OUT_OF_MEMORY,
               "for the q/k rows", [] {
                 WeightArena a;
                 a.alloc(SIZE_MAX - 10, "the q/k rows");
               });
  expect_error("arena: a mapping the system refuses is OUT_OF_MEMORY naming what it was for", KF_ERR_OUT_OF_MEMORY,
               "bytes for the model's weights", [] {
                 WeightArena a;
                 a.reserve(size_t(1) << 62);  // 4 EiB: more than any address space maps
               });
}

}  // namespace

int main() { return run_checks(arena_tests); }
