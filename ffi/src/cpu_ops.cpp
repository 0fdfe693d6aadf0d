// cpu_ops.cpp — the CPU element-wise kernels (cpu_ops.h): norms, softmax, RoPE, vector arithmetic,
// dtype conversions, and the bandwidth probe; the matrix products are in cpu_matmul.cpp, the attention
// tiles in cpu_attention.cpp. Every AVX2 block has a scalar twin right after it, and the scalar twins
// are also the tail loops of the vector code.
#include "cpu_ops.h"
#include "cpu_quant.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "cpu_simd.h"

namespace kf {

const char *cpu_simd_name() {
#if defined(KF_F16C)
  return "avx2+fma+f16c";
#elif defined(KF_AVX2)
  return "avx2+fma";
#else
  return "scalar";
#endif
}
// ---------------------------------------------------------------------------------------------
// Norms and element-wise kernels

namespace {

template <DType D>
void rmsnorm_dt(float *out, const float *x, const void *w, int64_t n, float eps) {
  int64_t i = 0;
  float ss = 0.0f;
#ifdef KF_AVX2
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    a0 = _mm256_fmadd_ps(v0, v0, a0);
    a1 = _mm256_fmadd_ps(v1, v1, a1);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 v0 = _mm256_loadu_ps(x + i);
    a0 = _mm256_fmadd_ps(v0, v0, a0);
  }
  ss = hsum(_mm256_add_ps(a0, a1));
#endif
  for (; i < n; i++) ss += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(ss / float(n) + eps);
  i = 0;
#ifdef KF_AVX2
  const __m256 vinv = _mm256_set1_ps(inv);
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), load8<D>(w, i)));
#endif
  for (; i < n; i++) out[i] = x[i] * inv * load1<D>(w, i);
}

}  // namespace

void rmsnorm(float *out, const float *x, const void *w, DType wdt, int64_t n, float eps) {
  if (n <= 0) return;
  switch (wdt) {
  case DType::F32: rmsnorm_dt<DType::F32>(out, x, w, n, eps); return;
  case DType::F16: rmsnorm_dt<DType::F16>(out, x, w, n, eps); return;
  case DType::BF16: rmsnorm_dt<DType::BF16>(out, x, w, n, eps); return;
  default: break;  // norms are never quantized
  }
  raise(KF_ERR_INTERNAL, "cannot run rmsnorm: unknown weight dtype %d", int(wdt));
}

void rmsnorm_rows(ThreadPool &pool, float *out, const float *x, const void *w, DType wdt, int64_t T, int64_t n,
                  float eps) {
  if (T <= 0 || n <= 0) return;
  if (wdt != DType::F32 && wdt != DType::F16 && wdt != DType::BF16)
    raise(KF_ERR_INTERNAL, "cannot run rmsnorm: unknown weight dtype %d", int(wdt));
  // A row of 4096 takes ~1 µs; only fan out when there is enough work to pay for the wake-up.
  if (T * n < (int64_t(1) << 15)) {
    for (int64_t t = 0; t < T; t++) rmsnorm(out + t * n, x + t * n, w, wdt, n, eps);
    return;
  }
  pool.parallel_for(T, [&](int64_t t, int) { rmsnorm(out + t * n, x + t * n, w, wdt, n, eps); });
}

float softmax_unnormalized(float *x, int64_t n, float *max_out) {
  *max_out = 0.0f;
  if (n <= 0) return 0.0f;
  int64_t i = 0;
  float mx = x[0];
#ifdef KF_AVX2
  if (n >= 8) {
    __m256 m = _mm256_loadu_ps(x);
    for (i = 8; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    mx = _mm_cvtss_f32(h);
  }
#endif
  for (; i < n; i++) mx = std::max(mx, x[i]);
  if (mx == -INFINITY) mx = 0.0f;  // every entry masked: leave the zeros (and NaN-free) below
  *max_out = mx;

  float sum = 0.0f;
  i = 0;
#ifdef KF_AVX2
  const __m256 vmx = _mm256_set1_ps(mx);
  __m256 s = _mm256_setzero_ps();
  if (ops_avx512()) {
    alignas(32) float sum8[8] = {};
    i = exp_sum_avx512(x, n, mx, sum8);
    s = _mm256_load_ps(sum8);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmx));
    _mm256_storeu_ps(x + i, e);
    s = _mm256_add_ps(s, e);
  }
  sum = hsum(s);
#endif
  for (; i < n; i++) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  return sum;
}

void softmax_inplace(float *x, int64_t n) {
  float mx;
  const float sum = softmax_unnormalized(x, n, &mx);
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  int64_t i = 0;
#ifdef KF_AVX2
  const __m256 vinv = _mm256_set1_ps(inv);
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
#endif
  for (; i < n; i++) x[i] *= inv;
}

void rope_angles(float *cs, double pos, const double *inv_freq, int64_t hd) {
  for (int64_t i = 0; i < hd / 2; i++) {
    const double a = pos * inv_freq[i];
    cs[2 * i] = float(std::cos(a));
    cs[2 * i + 1] = float(std::sin(a));
  }
}

void rope_rotate(float *x, int64_t T, int64_t n_heads, int64_t hd, const float *cs, bool inverse) {
  const int64_t half = hd / 2;
  for (int64_t t = 0; t < T; t++) {
    const float *c = cs + t * hd;
    for (int64_t h = 0; h < n_heads; h++) {
      float *v = x + (t * n_heads + h) * hd;
      for (int64_t i = 0; i < half; i++) {
        const float x1 = v[i], x2 = v[i + half], co = c[2 * i], si = inverse ? -c[2 * i + 1] : c[2 * i + 1];
        v[i] = x1 * co - x2 * si;
        v[i + half] = x2 * co + x1 * si;
      }
    }
  }
}

float dot_f32(const float *a, const float *b, int64_t n) {
  int64_t i = 0;
  float s = 0.0f;
#ifdef KF_AVX2
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
  s = hsum(_mm256_add_ps(a0, a1));
#endif
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

void axpy_f32(float a, const float *x, float *y, int64_t n) {
  int64_t i = 0;
#ifdef KF_AVX2
  const __m256 va = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
  for (; i < n; i++) y[i] += a * x[i];
}

void silu_mul(float *gate, const float *up, int64_t n) {
  int64_t i = 0;
#ifdef KF_AVX2
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  if (ops_avx512()) i = silu_mul_avx512(gate, up, n);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    // exp256 saturates at exp(88), so g / (1 + e^-g) stays finite (tends to -0) for very negative g.
    const __m256 sg = _mm256_div_ps(g, _mm256_add_ps(one, exp256(_mm256_sub_ps(zero, g))));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(sg, _mm256_loadu_ps(up + i)));
  }
#endif
  for (; i < n; i++) {
    const float g = gate[i];
    // exp(-g) may overflow to inf for g < -88: g / inf = -0, still the right limit.
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void add_inplace(float *y, const float *x, int64_t n) {
  int64_t i = 0;
#ifdef KF_AVX2
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
#endif
  for (; i < n; i++) y[i] += x[i];
}

void silu_mul(ThreadPool &pool, float *gate, const float *up, int64_t n) {
  pool.run_row_blocks(n, 64, size_t(n) * 8, [&](int64_t a, int64_t b) { silu_mul(gate + a, up + a, b - a); });
}

void add_inplace(ThreadPool &pool, float *y, const float *x, int64_t n) {
  pool.run_row_blocks(n, 64, size_t(n) * 8, [&](int64_t a, int64_t b) { add_inplace(y + a, x + a, b - a); });
}

void convert_row_to_f32(const void *src, DType dt, float *dst, int64_t n) {
  if (n <= 0) return;
  int64_t i = 0;
  switch (dt) {
  case DType::F32: std::memcpy(dst, src, size_t(n) * sizeof(float)); return;
  case DType::BF16:
#ifdef KF_AVX2
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8<DType::BF16>(src, i));
#endif
    for (; i < n; i++) dst[i] = load1<DType::BF16>(src, i);
    return;
  case DType::F16:
#ifdef KF_F16C
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8<DType::F16>(src, i));
#endif
    for (; i < n; i++) dst[i] = load1<DType::F16>(src, i);
    return;
  case DType::Q8_0:
  case DType::Q4_0:  // an embedding row of a quantized table; rows are whole blocks
  case DType::Q4_K:
  case DType::Q6_K:
    if (n % dtype_block_values(dt) != 0)
      raise(KF_ERR_INTERNAL, "cannot convert row: %lld values are not whole blocks", (long long)n);
    dequantize_row(src, dt, dst, n);
    return;
  case DType::Q8_0_R16:
  case DType::Q4_0_R16:
  case DType::Q4_K_R16:
  case DType::Q6_K_R16:  // rows are spread over their group: weight_row_to_f32 reads them
    raise(KF_ERR_INTERNAL, "cannot convert row: interleaved %s weights have no row of their own", dtype_name(dt));
  }
  raise(KF_ERR_INTERNAL, "cannot convert row: unknown dtype %d", int(dt));
}

void convert_f32_to(const float *src, DType dt, void *dstv, int64_t n) {
  if (n <= 0) return;
  uint16_t *dst = static_cast<uint16_t *>(dstv);
  int64_t i = 0;
  switch (dt) {
  case DType::F32: std::memcpy(dstv, src, size_t(n) * sizeof(float)); return;
  case DType::BF16: {
#ifdef KF_AVX2
    const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7fff);
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    for (; i + 8 <= n; i += 8) {
      const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(src + i));
      // Round to nearest even on bit 16 (as f32_to_bf16), keeping NaNs quiet NaNs.
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
      __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(half, lsb)), 16);
      const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
      r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), is_nan);
      // Narrow 8 x u32 (all < 2^16) to u16: packus works per 128-bit lane, then gather the halves.
      const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), _MM_SHUFFLE(3, 1, 2, 0));
      _mm_storeu_si128(reinterpret_cast<__m128i *>(dst + i), _mm256_castsi256_si128(p));
    }
#endif
    for (; i < n; i++) dst[i] = f32_to_bf16(src[i]);
    return;
  }
  case DType::F16:
#ifdef KF_F16C
    for (; i + 8 <= n; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i *>(dst + i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; i < n; i++) dst[i] = f32_to_f16(src[i]);
    return;
  default: break;  // quantized: quantize_row (cpu_quant.h)
  }
  raise(KF_ERR_INTERNAL, "cannot convert row: unknown dtype %d", int(dt));
}

// ---------------------------------------------------------------------------------------------
// Bandwidth probe

double measure_read_bandwidth(ThreadPool &pool, int64_t bytes, int repeats, kf_control *ctl) {
  const int nth = pool.size();
  // Every thread gets an equal slice that is a whole number of 256-byte steps.
  const int64_t slice = bytes / nth / 256 * 256;
  if (slice <= 0 || repeats < 1)
    raise(KF_ERR_INTERNAL, "cannot measure bandwidth: %lld bytes over %d threads, %d repeats", (long long)bytes, nth,
          repeats);
  const size_t total = size_t(slice) * size_t(nth);
  std::vector<float> sink(size_t(nth), 0.0f);  // one sum per thread, so the loads are used
  // Freed on every exit, a cancellation included.
  const std::unique_ptr<unsigned char, void (*)(unsigned char *)> owned(
      static_cast<unsigned char *>(::operator new(total, std::align_val_t(64))),
      [](unsigned char *p) { ::operator delete(p, std::align_val_t(64)); });
  unsigned char *buf = owned.get();
  // Huge pages first: touching 1 GiB of 4 KiB pages is 262144 page faults (about half of a probe's
  // time, and the memset / page-fault share of a whole-bench profile).
  advise_huge_pages(buf, total);
  // First touch from the thread that will read the slice (page placement), with nonzero data.
  pool.run_per_thread([&](int th, int) { std::memset(buf + size_t(th) * size_t(slice), 1 + th, size_t(slice)); });

  double best = 0.0;
  progress_start(ctl, repeats);
  for (int rep = 0; rep < repeats; rep++) {
    check_cancel(ctl, "measure read bandwidth");
    const auto t0 = std::chrono::steady_clock::now();
    pool.run_per_thread([&](int th, int) {
      const unsigned char *p = buf + size_t(th) * size_t(slice);
      float s = 0.0f;
#ifdef KF_AVX2
      // Four streams per thread, a quarter of its slice each, read in lockstep: more misses in
      // flight than one stream (about 10% more bandwidth per core on Zen 3), as a matvec over
      // several rows has.
      const int64_t quarter = slice / 4;  // a multiple of 64 bytes
      const unsigned char *q[4] = {p, p + quarter, p + 2 * quarter, p + 3 * quarter};
      __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int64_t i = 0; i < quarter; i += 64)
        for (int k = 0; k < 4; k++) {
          const float *f = reinterpret_cast<const float *>(q[k] + i);
          a[k] = _mm256_add_ps(a[k], _mm256_add_ps(_mm256_load_ps(f), _mm256_load_ps(f + 8)));
        }
      s = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
#else
      uint64_t acc = 0;
      for (int64_t i = 0; i < slice; i += 8) {
        uint64_t v;
        std::memcpy(&v, p + i, 8);
        acc += v;
      }
      s = float(acc);
#endif
      sink[size_t(th)] += s;
    });
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (sec > 0) best = std::max(best, double(total) / sec / 1e9);
    progress_set(ctl, rep + 1);
  }
  volatile float keep = sink[0];  // the sums escape, so the loads cannot be dropped
  (void)keep;
  return best;
}

}  // namespace kf
