// common.cpp — error raising, scalar half-precision conversion and the memory available to allocate.
#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>

namespace kf {

void raise(kf_status code, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  throw Error(code, buf);
}

void advise_huge_pages(void *p, size_t n) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + n) & ~(kHuge - 1);
  if (b > a) (void)madvise(reinterpret_cast<void *>(a), b - a, MADV_HUGEPAGE);  // a hint: failure is harmless
#else
  (void)p, (void)n;
#endif
}

namespace {

// The number after `key` on the first line of a text file that starts with it (`key` "": the first
// line), or -1 when there is no such line, no file, or no number there (cgroup v2's "max").
double read_keyed_number(const char *path, const char *key) {
  FILE *f = std::fopen(path, "r");
  if (!f) return -1.0;
  char line[256];
  double v = -1.0;
  const size_t n = std::strlen(key);
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, key, n) == 0) {
      char *end = nullptr;
      const double got = std::strtod(line + n, &end);
      if (end != line + n) v = got;
      break;
    }
  std::fclose(f);
  return v;
}

}  // namespace

double available_memory_bytes() {
  // MemAvailable counts the page cache the kernel can drop. Free pages alone (sysconf's
  // _SC_AVPHYS_PAGES) do not: after reading a few model files that is a few GiB on a 24 GiB
  // machine, and loads were refused with 20 GiB to spare (the llama.cpp bench's second round).
  double avail = read_keyed_number("/proc/meminfo", "MemAvailable:");
  avail = avail >= 0 ? avail * 1024.0 : -1.0;
  if (avail < 0) {
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    avail = pages > 0 && page > 0 ? double(pages) * double(page) : 0.0;
  }
  // A container's cgroup (v2) limit binds before the machine's memory does.
  const double max = read_keyed_number("/sys/fs/cgroup/memory.max", ""),
               cur = read_keyed_number("/sys/fs/cgroup/memory.current", "");
  if (max >= 0 && cur >= 0) avail = std::min(avail, std::max(0.0, max - cur));
  return avail;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do {
        man <<= 1;
        e++;
      } while (!(man & 0x400));
      u = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | man << 13;
  } else {
    u = sign | (exp + 112) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000;
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00);  // NaN
  if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00); // overflow (rounds past 65504) -> inf
  if (abs < 0x38800000u) {                                 // subnormal or zero in f16
    float a;
    std::memcpy(&a, &abs, 4);
    // 2^-24 is the f16 subnormal step; nearbyint rounds half to even.
    return uint16_t(sign | uint32_t(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u);  // round to nearest even at bit 13
  return uint16_t(sign | (((r >> 23) - 112) << 10) | ((r >> 13) & 0x3ff));
}

}  // namespace kf
