// cpu_features.cpp — cpuid, xgetbv and KVFOLD_CPU (cpu_features.h).
#include "cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace kf {

namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  f.intel = b == 0x756e6547 && d == 0x49656e69 && c == 0x6c65746e;  // "Genu" "ineI" "ntel"
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1, avx = (c >> 28) & 1;
  if (!osxsave || !avx) return f;
  // The OS must save the registers: XCR0 bits 1-2 (xmm, ymm), 5-7 (opmask, zmm).
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  const bool ymm_os = (lo & 0x6) == 0x6, zmm_os = (lo & 0xe6) == 0xe6;
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
  const bool vnni512 = (c >> 11) & 1;
  unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
  __cpuid_count(7, 1, a1, b1, c1, d1);
  const bool bf16 = (a1 >> 5) & 1, avxvnni = (a1 >> 4) & 1;
  f.avx2 = ymm_os && avx2 && fma && f16c;
  f.avx512 = f.avx2 && zmm_os && avx512f && avx512bw && avx512vl;
  f.avx512_bf16 = f.avx512 && bf16;
  f.avx512_vnni = f.avx512 && vnni512;
  f.avx_vnni = f.avx2 && avxvnni;
  // AMX: Linux hands out the 8 KiB tile state only on request (ARCH_REQ_XCOMP_PERM for
  // XFEATURE_XTILEDATA), once per process; then XCR0 bits 17-18 say the OS saves it.
  const bool amx_tile = (d >> 24) & 1, amx_int8 = (d >> 25) & 1, amx_bf16 = (d >> 22) & 1;
#if defined(__linux__) && defined(__x86_64__)
  if (f.avx512_bf16 && f.avx512_vnni && amx_tile && (amx_int8 || amx_bf16) && syscall(SYS_arch_prctl, 0x1023, 18) == 0) {
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    const bool os = (lo & 0x60000) == 0x60000;
    f.amx_int8 = os && amx_int8;
    f.amx_bf16 = os && amx_bf16;
  }
#else
  (void)amx_tile, (void)amx_int8, (void)amx_bf16;
#endif
#endif
  return f;
}

// The best path of this CPU and build. The AVX2 kernels of cpu_matmul.cpp are compiled in only when
// the build targets AVX2 (-march=native on such a CPU); the AVX-512 ones always are (target attributes).
CpuPath best_path() {
  const CpuFeatures &f = cpu_features();
#if defined(__AVX2__) && defined(__FMA__)
  if (f.amx_int8 || f.amx_bf16) return CpuPath::Amx;
  if (f.avx512_bf16) return CpuPath::Avx512Bf16;
  if (f.avx512) return CpuPath::Avx512;
  if (f.avx2) return CpuPath::Avx2;
#else
  (void)f;
#endif
  return CpuPath::Scalar;
}

CpuPath from_env() {
  const CpuPath best = best_path();
  const char *e = std::getenv("KVFOLD_CPU");
  if (!e || !*e || !std::strcmp(e, "auto")) return best;
  CpuPath want = best;
  if (!std::strcmp(e, "scalar")) want = CpuPath::Scalar;
  else if (!std::strcmp(e, "avx2")) want = CpuPath::Avx2;
  else if (!std::strcmp(e, "avx512")) want = CpuPath::Avx512;
  else if (!std::strcmp(e, "avx512bf16") || !std::strcmp(e, "avx512-bf16")) want = CpuPath::Avx512Bf16;
  else if (!std::strcmp(e, "amx")) want = CpuPath::Amx;
  return int32_t(want) < int32_t(best) ? want : best;
}

std::atomic<int32_t> g_path{-1};

}  // namespace

const CpuFeatures &cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

CpuPath cpu_path() {
  int32_t p = g_path.load(std::memory_order_relaxed);
  if (p < 0) {
    int32_t expected = -1;
    g_path.compare_exchange_strong(expected, int32_t(from_env()));
    p = g_path.load();
  }
  return CpuPath(p);
}

bool cpu_int8_vnni() {
  const CpuFeatures &f = cpu_features();
  return int32_t(cpu_path()) >= int32_t(CpuPath::Avx512) && (f.avx512_vnni || f.avx_vnni);
}

namespace {
std::atomic<const DecodeReads *> g_forced_reads{nullptr};
DecodeReads g_forced_copy;

// KVFOLD_<name> as one of two words, else the default.
bool env_choice(const char *name, const char *yes, const char *no, bool dflt) {
  const char *e = std::getenv(name);
  if (e && !std::strcmp(e, yes)) return true;
  if (e && !std::strcmp(e, no)) return false;
  return dflt;
}
}  // namespace

const DecodeReads &cpu_decode_reads() {
  if (const DecodeReads *f = g_forced_reads.load(std::memory_order_acquire)) return *f;
  static const DecodeReads reads = [] {
    const bool intel = cpu_features().intel;
    DecodeReads r;
    r.prefetch_l2 = env_choice("KVFOLD_PREFETCH", "l2", "l1", intel);
    r.short_rows_paired = env_choice("KVFOLD_SHORT_ROWS", "pair", "one", intel);
    r.two_streams = env_choice("KVFOLD_DECODE_STREAMS", "2", "1", !intel);
    return r;
  }();
  return reads;
}

void cpu_force_decode_reads(const DecodeReads *reads) {
  g_forced_reads.store(nullptr, std::memory_order_release);
  if (!reads) return;
  g_forced_copy = *reads;
  g_forced_reads.store(&g_forced_copy, std::memory_order_release);
}

bool cpu_int8_amx() { return cpu_path() == CpuPath::Amx && cpu_features().amx_int8; }
bool cpu_bf16_amx() { return cpu_path() == CpuPath::Amx && cpu_features().amx_bf16; }

const char *cpu_path_name(CpuPath p) {
  switch (p) {
  case CpuPath::Scalar: return "scalar";
  case CpuPath::Avx2: return "avx2";
  case CpuPath::Avx512: return "avx512";
  case CpuPath::Avx512Bf16: return "avx512-bf16";
  case CpuPath::Amx: return "amx";
  }
  return "?";
}

const char *cpu_kernels_name() {
  static const char *names[5][2] = {{"scalar", "scalar"},
                                    {"avx2", "avx2"},
                                    {"avx512", "avx512, int8 vnni"},
                                    {"avx512-bf16", "avx512-bf16, int8 vnni"},
                                    {"amx", "amx, avx512-bf16, int8 vnni"}};
  return names[int32_t(cpu_path())][cpu_int8_vnni() ? 1 : 0];
}

CpuPath cpu_force_path(CpuPath p) {
  const CpuPath best = best_path();
  const CpuPath set = int32_t(p) < int32_t(best) ? p : best;
  g_path.store(int32_t(set));
  return set;
}

}  // namespace kf
