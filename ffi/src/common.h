// common.h — internal helpers shared by every native source: errors, dtypes, half-precision conversion.
// Inside the library, failures are C++ exceptions (kf::Error); every public kf_* entry point catches
// them (and std::bad_alloc) and turns them into a kf_status plus the thread-local message.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../include/kvfold.h"

namespace kf {

struct Error : std::runtime_error {
  kf_status code;
  Error(kf_status c, const std::string &msg) : std::runtime_error(msg), code(c) {}
};

// Throws kf::Error(code, printf-formatted message). Messages read "cannot X: Y".
[[noreturn]] void raise(kf_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// A control block is shared with the caller while a call runs (the caller sets cancel and reads the
// progress from its own thread), so its fields are read and written as relaxed atomics, never as plain
// loads and stores: `volatile` in kvfold.h is for C callers and orders nothing between threads. Every
// helper takes ctl NULL as "no control block".
inline bool cancel_requested(const kf_control *ctl) {
  return ctl && __atomic_load_n(&ctl->cancel, __ATOMIC_RELAXED) != 0;
}
// Progress: a call starts at 0 of `total` units, then sets or adds how many are done.
inline void progress_start(kf_control *ctl, int64_t total) {
  if (!ctl) return;
  __atomic_store_n(&ctl->total, total, __ATOMIC_RELAXED);
  __atomic_store_n(&ctl->done, int64_t(0), __ATOMIC_RELAXED);
}
inline void progress_set(kf_control *ctl, int64_t done) {
  if (ctl) __atomic_store_n(&ctl->done, done, __ATOMIC_RELAXED);
}
inline void progress_add(kf_control *ctl, int64_t n) {
  if (ctl) __atomic_fetch_add(&ctl->done, n, __ATOMIC_RELAXED);
}

// Throws KF_ERR_CANCELLED "cannot <what>: cancelled" once the caller set ctl->cancel (ctl may be NULL).
// Long loops poll it between steps (a layer, a tensor, a segment), never inside a worker.
inline void check_cancel(const kf_control *ctl, const char *what) {
  if (cancel_requested(ctl)) raise(KF_ERR_CANCELLED, "cannot %s: cancelled", what);
}

// Q8_0 / Q4_0: llama.cpp's weight blocks (cpu_quant.h), for matrices only; never activations.
enum class DType : int32_t {
  F32 = KF_DTYPE_F32,
  F16 = KF_DTYPE_F16,
  BF16 = KF_DTYPE_BF16,
  Q8_0 = KF_DTYPE_Q8_0,
  Q4_0 = KF_DTYPE_Q4_0,
  // llama.cpp's k-quants as GGUF files store them (never in the ABI; computed on only in the
  // interleaved layouts below, else converted at load): Q4_K (144-byte blocks of 256) and Q6_K (210).
  Q4_K = 5,
  Q6_K = 6,
  // Q8_0 / Q4_0 blocks with 16 rows interleaved (cpu_quant.h): what the CPU loader makes of a
  // quantized matrix where the AVX512-VNNI kernels run. Same bytes per row; never in the ABI.
  Q8_0_R16 = 7,
  Q4_0_R16 = 8,
  // Q4_K blocks likewise, with their 6-bit scales and mins unpacked to bytes (148 bytes per row and
  // 256 values): a Q4_K GGUF matrix computed as it is stored.
  Q4_K_R16 = 9,
  // Q6_K blocks likewise (210 bytes per row and 256 values, as stored; cpu_quant_vnni512.h).
  Q6_K_R16 = 10,
};
constexpr int kNumDTypes = 11;

// The 16-row interleaved layouts, and the row-major dtype each holds the blocks of.
inline bool dtype_rows16(DType t) {
  return t == DType::Q8_0_R16 || t == DType::Q4_0_R16 || t == DType::Q4_K_R16 || t == DType::Q6_K_R16;
}
inline DType dtype_block_kind(DType t) {
  switch (t) {
  case DType::Q8_0_R16: return DType::Q8_0;
  case DType::Q4_0_R16: return DType::Q4_0;
  case DType::Q4_K_R16: return DType::Q4_K;
  case DType::Q6_K_R16: return DType::Q6_K;
  default: return t;
  }
}
// Weights the int8 matmuls run on: Q8_0 / Q4_0 (blocks of 32, either layout), Q4_K_R16 and Q6_K_R16.
inline bool dtype_quantized(DType t) {
  return t == DType::Q4_K_R16 || t == DType::Q6_K_R16 || dtype_block_kind(t) == DType::Q8_0 ||
         dtype_block_kind(t) == DType::Q4_0;
}
// Q4_K / Q6_K: weights that are only ever dequantized (blocks of 256).
inline bool dtype_load_only(DType t) { return t == DType::Q4_K || t == DType::Q6_K; }
// Values per block of a quantized dtype: 256 for the k-quants (either layout), else 32.
inline int64_t dtype_block_values(DType t) { return dtype_load_only(dtype_block_kind(t)) ? 256 : 32; }
// Bytes per element of a float dtype (quantized ones have no per-element size: use dtype_row_bytes).
inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
// Bytes of a row of n values; quantized rows are n / 32 blocks of 34 (Q8_0) or 18 (Q4_0) bytes, or
// n / 256 blocks of 144 (Q4_K) or 210 (Q6_K).
inline size_t dtype_row_bytes(DType t, int64_t n) {
  if (t == DType::Q4_K_R16) return size_t(n / 256) * 148;
  t = dtype_block_kind(t);
  if (t == DType::Q8_0) return size_t(n / 32) * 34;
  if (t == DType::Q4_0) return size_t(n / 32) * 18;
  if (t == DType::Q4_K) return size_t(n / 256) * 144;
  if (t == DType::Q6_K) return size_t(n / 256) * 210;
  return size_t(n) * dtype_size(t);
}
inline const char *dtype_name(DType t) {
  switch (t) {
  case DType::F32: return "F32";
  case DType::F16: return "F16";
  case DType::BF16: return "BF16";
  case DType::Q8_0: return "Q8_0";
  case DType::Q4_0: return "Q4_0";
  case DType::Q4_K: return "Q4_K";
  case DType::Q6_K: return "Q6_K";
  case DType::Q8_0_R16: return "Q8_0";  // users asked for Q8_0: the layout is the CPU's business
  case DType::Q4_0_R16: return "Q4_0";
  case DType::Q4_K_R16: return "Q4_K";
  case DType::Q6_K_R16: return "Q6_K";
  }
  return "?";
}

// Scalar conversions (vectorised versions live in cpu_ops.h).
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {  // round to nearest even, NaN kept quiet
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);

// Physical memory available now, in bytes (0 when unknown): Linux's MemAvailable (free pages plus the
// cache the kernel can drop), capped by the cgroup v2 limit where one is set. Big allocations are
// checked against it before they are touched: under overcommit they would otherwise succeed and get
// the process killed.
double available_memory_bytes();
// Asks the kernel to back the whole 2 MiB pages inside [p, p + n) with transparent huge pages
// (Linux THP "madvise" mode), before they are first touched: 512 times fewer page faults when a big
// buffer is filled, and fewer TLB misses when weights are streamed. A hint; no-op elsewhere.
void advise_huge_pages(void *p, size_t n);
uint16_t f32_to_f16(float f);

}  // namespace kf
