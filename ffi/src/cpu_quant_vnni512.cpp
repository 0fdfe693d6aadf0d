// cpu_quant_vnni512.cpp — the 16-row interleaved weight layouts (Q8_0_R16, Q4_0_R16, Q4_K_R16, Q6_K_R16:
// interleaving, reading a row back) and the prefill GEMM that reads 16 weight rows per AVX512-VNNI
// instruction over repacked panels (cpu_quant_vnni512.h; the layouts' decode kernels are in
// cpu_quant_rows16.cpp). Portable code (the interleaving itself) builds everywhere; the kernels only
// where the compiler targets x86-64, each with its own target attribute, and run only where
// cpu_features() says the CPU has AVX512-VNNI.
#include "cpu_quant_vnni512.h"

#include <cstring>
#include <vector>

#include "threadpool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define KF_QUANT_X86 1
#endif

namespace kf {

namespace {
size_t quant_bytes(DType base) { return quant_block_bytes(base) - 2; }  // a block's values (after its f16 scale)

using quant::kQ4kGroupBlock, quant::kQ4kMins, quant::kQ4kScales, quant::kQ4kValues;
using quant::kQ6kGroupBlock, quant::kQ6kHigh, quant::kQ6kLow, quant::kQ6kScales;

size_t group_block_bytes(DType dt) {  // one group's block b, of a row-major dtype's blocks
  return dt == DType::Q4_K ? kQ4kGroupBlock : dt == DType::Q6_K ? kQ6kGroupBlock : 16 * quant_block_bytes(dt);
}

// Row r's block b of a row-major matrix into its place in group block o.
void place_block(DType dt, const uint8_t *blk, int r, uint8_t *o) {
  if (dt == DType::Q4_K) {
    const BlockQ4_K &q = *reinterpret_cast<const BlockQ4_K *>(blk);
    std::memcpy(o + 2 * r, &q.d, 2);
    std::memcpy(o + 32 + 2 * r, &q.dmin, 2);
    for (int j = 0; j < 8; j++) q4_k_scale_min(q.scales, j, o + kQ4kScales + 16 * j + r, o + kQ4kMins + 16 * j + r);
    for (int c = 0; c < 32; c++) std::memcpy(o + kQ4kValues + 64 * c + 4 * r, q.qs + 4 * c, 4);
    return;
  }
  if (dt == DType::Q6_K) {
    const BlockQ6_K &q = *reinterpret_cast<const BlockQ6_K *>(blk);
    uint8_t c[kKQuantBlock];
    q6_k_codes(q, c);
    std::memcpy(o + 2 * r, &q.d, 2);
    for (int j = 0; j < 16; j++) o[kQ6kScales + 16 * j + r] = uint8_t(q.scales[j]);
    for (int i = 0; i < 4; i++)
      for (int k = 0; k < 8; k++)
        for (int e = 0; e < 4; e++) {
          const uint8_t a = c[64 * i + 4 * k + e], b = c[64 * i + 32 + 4 * k + e];  // low, high nibble
          o[kQ6kLow + 64 * (8 * i + k) + 4 * r + e] = uint8_t((a & 15) | (b & 15) << 4);
          uint8_t &h = o[kQ6kHigh + 64 * (4 * i + k / 2) + 4 * r + e];
          h = uint8_t(h | ((a >> 4) | (b >> 4) << 2) << (4 * (k % 2)));
        }
    return;
  }
  std::memcpy(o + 2 * r, blk, 2);
  for (size_t k = 0; k < quant_bytes(dt) / 4; k++) std::memcpy(o + 32 + 64 * k + 4 * r, blk + 2 + 4 * k, 4);
}
}  // namespace

// Group g (16 rows), block b at (g * nb + b) * (group block bytes): the 16 rows' blocks b.
void interleave_rows16(ThreadPool &pool, DType dt, const void *srcv, int64_t rows, int64_t cols, void *dstv) {
  const int64_t per = dtype_block_values(dt);
  const bool k_quant = dt == DType::Q4_K || dt == DType::Q6_K;
  if (!(dt == DType::Q8_0 || dt == DType::Q4_0 || k_quant) || rows % 16 != 0 || cols % per != 0 ||
      (k_quant && srcv == dstv))
    raise(KF_ERR_INTERNAL, "cannot interleave %s rows: %lld x %lld is not whole 16-row groups of blocks%s",
          dtype_name(dt), (long long)rows, (long long)cols, k_quant ? " (or in place)" : "");
  const uint8_t *src = static_cast<const uint8_t *>(srcv);
  uint8_t *dst = static_cast<uint8_t *>(dstv);
  const int64_t nb = cols / per;
  const size_t bs = quant_block_bytes(dt), rb = size_t(nb) * bs;
  const size_t gb = group_block_bytes(dt);
  // Q8_0 / Q4_0 groups take the same bytes in both layouts: each is copied aside first, so dst may be src.
  // Q6_K's high bits are ORed in: the group starts zeroed.
  if (dt == DType::Q6_K) std::memset(dst, 0, size_t(rows / 16) * size_t(nb) * gb);
  std::vector<uint8_t> aside(size_t(pool.size()) * 16 * rb);  // allocated here: no throw in workers
  pool.parallel_for(rows / 16, [&](int64_t g, int thread) {
    uint8_t *rows16 = aside.data() + size_t(thread) * 16 * rb;
    std::memcpy(rows16, src + size_t(16 * g) * rb, 16 * rb);
    for (int64_t b = 0; b < nb; b++)
      for (int r = 0; r < 16; r++)
        place_block(dt, rows16 + size_t(r) * rb + size_t(b) * bs, r, dst + (size_t(g) * size_t(nb) + size_t(b)) * gb);
  });
}

void deinterleave_row16(DType dt, const void *wv, int64_t r, int64_t cols, void *dstv) {
  const DType base = dtype_block_kind(dt);
  if (!(dt == DType::Q8_0_R16 || dt == DType::Q4_0_R16) || cols % kQuantBlock != 0)
    raise(KF_ERR_INTERNAL, "cannot read an interleaved row of %s weights with %lld columns", dtype_name(dt),
          (long long)cols);
  const uint8_t *w = static_cast<const uint8_t *>(wv);
  uint8_t *dst = static_cast<uint8_t *>(dstv);
  const int64_t nb = cols / kQuantBlock, g = r / 16, i = r % 16;
  const size_t bs = quant_block_bytes(base), chunks = quant_bytes(base) / 4;
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t *o = w + (size_t(g) * size_t(nb) + size_t(b)) * 16 * bs;
    uint8_t *blk = dst + size_t(b) * bs;
    std::memcpy(blk, o + 2 * i, 2);
    for (size_t k = 0; k < chunks; k++) std::memcpy(blk + 2 + 4 * k, o + 32 + 64 * k + 4 * i, 4);
  }
}

void rows16_row_to_f32(DType dt, const void *wv, int64_t r, int64_t cols, float *dst) {
  if (dt != DType::Q4_K_R16 && dt != DType::Q6_K_R16) {
    std::vector<uint8_t> blocks(dtype_row_bytes(dt, cols));
    deinterleave_row16(dt, wv, r, cols, blocks.data());
    return dequantize_row(blocks.data(), dtype_block_kind(dt), dst, cols);
  }
  if (cols % kKQuantBlock != 0)
    raise(KF_ERR_INTERNAL, "cannot read a %s row of %lld columns", dtype_name(dt), (long long)cols);
  const uint8_t *w = static_cast<const uint8_t *>(wv);
  const size_t gb = group_block_bytes(dtype_block_kind(dt));
  const int64_t nb = cols / kKQuantBlock, g = r / 16, i = r % 16;
  for (int64_t b = 0; b < nb; b++, dst += kKQuantBlock) {
    const uint8_t *o = w + (size_t(g) * size_t(nb) + size_t(b)) * gb;
    uint16_t dh;
    std::memcpy(&dh, o + 2 * i, 2);
    const float d = f16_to_f32(dh);
    if (dt == DType::Q6_K_R16) {  // as dequantize_q6_k: d * sc * (q - 32), in f32
      for (int p = 0; p < 4; p++)
        for (int k = 0; k < 8; k++)
          for (int e = 0; e < 4; e++) {
            const uint8_t lo = o[kQ6kLow + 64 * (8 * p + k) + 4 * i + e];
            const uint8_t hi = uint8_t(o[kQ6kHigh + 64 * (4 * p + k / 2) + 4 * i + e] >> (4 * (k % 2)));
            const int l0 = 64 * p + 4 * k + e, l1 = l0 + 32;
            dst[l0] = d * float(int8_t(o[kQ6kScales + 16 * (l0 / 16) + i])) * float(((lo & 15) | (hi & 3) << 4) - 32);
            dst[l1] = d * float(int8_t(o[kQ6kScales + 16 * (l1 / 16) + i])) * float(((lo >> 4) | (hi >> 2 & 3) << 4) - 32);
          }
      continue;
    }
    uint16_t mh;
    std::memcpy(&mh, o + 32 + 2 * i, 2);
    const float dmin = f16_to_f32(mh);
    for (int j = 0; j < 8; j++) {  // as dequantize_q4_k: (d * sc) * q - dmin * m, in f32
      const float ds = d * float(o[kQ4kScales + 16 * j + i]), dm = dmin * float(o[kQ4kMins + 16 * j + i]);
      for (int l = 0; l < 32; l++) {
        const uint8_t q = o[kQ4kValues + 64 * (8 * (j / 2) + l / 4) + 4 * i + l % 4];
        dst[32 * j + l] = ds * float(j % 2 ? q >> 4 : q & 15) - dm;
      }
    }
  }
}

namespace quant {

namespace {

#ifdef KF_QUANT_X86
// The prefill GEMM (AVX512-VNNI, T >= kGemmMinTokens). Per task, one panel of 16 * C weight rows is
// repacked into the pool's scratch so that one zmm holds 16 rows' next 4 values (vpdpbusd lanes =
// output rows), then every activation row passes over it, 6 at a time with the 4 bytes broadcast.
// vpdpbusd multiplies unsigned by signed bytes, so the weights are stored unsigned with an offset
// (Q4_0: the nibble, offset 8; Q8_0: w + 128) and each block's int sum starts at -offset * sum(x):
// the same exact int dot as the row kernels, then the same acc = fma(float(dot), d_w * d_x, acc)
// per block in block order, so the GEMM and rows8 give identical bits for every output.
//   panel, per block b: f32 d[16C]; u8 v[8 quads][C][16 lanes][4]     (kPanelBlockBytes * C bytes)
constexpr int kGemmTile = 6;        // activation rows per register tile: 6 x C int and f32 accumulators
constexpr size_t kPanelBlockBytes = 16 * 4 + 16 * 32;  // per 16 rows and block: scales, values
constexpr int64_t kPackAhead = 4;  // blocks fetched ahead while packing: the best of 2, 4, 8 at T = 2..16

// GCC 12 reports the `_mm512_undefined_*` pass-through operands inside AVX-512 intrinsics as "may be
// used uninitialized" (a false positive in its headers, not in this code).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// o[q] = dword q of rows 0..15 from r[i] = [row i's 8 dwords | row i + 8's 8 dwords]: an 8 x 8
// transpose in each 256-bit half (unpack 32, unpack 64), then the halves' 128-bit lanes interleaved.
KF_VNNI512 inline void transpose_16x8_dwords(const __m512i r[8], __m512i o[8]) {
  __m512i a[8], b[8];
  for (int i = 0; i < 8; i += 2) {
    a[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    a[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    b[i] = _mm512_unpacklo_epi64(a[i], a[i + 2]);      // dwords 0 | 4 of rows i..i+3
    b[i + 1] = _mm512_unpackhi_epi64(a[i], a[i + 2]);  // 1 | 5
    b[i + 2] = _mm512_unpacklo_epi64(a[i + 1], a[i + 3]);  // 2 | 6
    b[i + 3] = _mm512_unpackhi_epi64(a[i + 1], a[i + 3]);  // 3 | 7
  }
  const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  for (int q = 0; q < 4; q++) {
    o[q] = _mm512_permutex2var_epi64(b[q], lo, b[q + 4]);
    o[q + 4] = _mm512_permutex2var_epi64(b[q], hi, b[q + 4]);
  }
}

template <DType D, int C>
KF_VNNI512 void pack_vnni_panel(const uint8_t *w, size_t rb, int64_t nb, uint8_t *dst) {
  constexpr size_t bs = quant_block_bytes(D);
  for (int64_t b = 0; b < nb; b++) {
    float *d = reinterpret_cast<float *>(dst + size_t(b) * kPanelBlockBytes * C);
    uint8_t *v = dst + size_t(b) * kPanelBlockBytes * C + 64 * C;
    for (int c = 0; c < C; c++) {
      const uint8_t *blk = w + size_t(16 * c) * rb + size_t(b) * bs;
      // 16 row streams at once: fetch a few blocks ahead (a small T reads W from DRAM).
      if (b + kPackAhead < nb)
        for (int r = 0; r < 16; r++) _mm_prefetch(reinterpret_cast<const char *>(blk + size_t(r) * rb + kPackAhead * bs), _MM_HINT_T0);
      for (int r = 0; r < 16; r++) {
        uint16_t dh;
        std::memcpy(&dh, blk + size_t(r) * rb, 2);
        d[16 * c + r] = _cvtsh_ss(dh);
      }
      // Each row's 32 values as unsigned bytes, rows i and i + 8 in one register.
      __m512i r[8], o[8];
      for (int i = 0; i < 8; i++) {
        const uint8_t *p0 = blk + size_t(i) * rb + 2, *p1 = blk + size_t(i + 8) * rb + 2;
        if constexpr (D == DType::Q8_0) {
          const __m512i q = _mm512_inserti64x4(
              _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p0))),
              _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p1)), 1);
          r[i] = _mm512_xor_si512(q, _mm512_set1_epi8(char(0x80)));
        } else {
          const __m128i x0 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p0));
          const __m128i x1 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p1));
          const __m512i q = _mm512_inserti64x4(_mm512_zextsi256_si512(_mm256_set_m128i(_mm_srli_epi16(x0, 4), x0)),
                                               _mm256_set_m128i(_mm_srli_epi16(x1, 4), x1), 1);
          r[i] = _mm512_and_si512(q, _mm512_set1_epi8(15));
        }
      }
      transpose_16x8_dwords(r, o);
      for (int q = 0; q < 8; q++) _mm512_storeu_si512(v + (q * C + c) * 64, o[q]);
    }
  }
}

// y[j][0, 16C) for R activation rows x[j] against a packed panel.
template <int R, int C>
KF_VNNI512 void vnni_tile(const uint8_t *panel, int64_t nb, int32_t offset, const ActBlock *const *x,
                          float *const *y) {
  __m512 acc[R][C];
  for (int j = 0; j < R; j++)
    for (int c = 0; c < C; c++) acc[j][c] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t *p = panel + size_t(b) * kPanelBlockBytes * C;
    __m512i s[R][C];
    for (int j = 0; j < R; j++) {
      const __m512i init = _mm512_set1_epi32(-offset * x[j][b].sum);
      for (int c = 0; c < C; c++) s[j][c] = init;
    }
    for (int q = 0; q < 8; q++) {
      __m512i w[C];
      for (int c = 0; c < C; c++) w[c] = _mm512_loadu_si512(p + 64 * C + (q * C + c) * 64);
      for (int j = 0; j < R; j++) {
        int32_t x4;
        std::memcpy(&x4, x[j][b].qs + 4 * q, 4);
        const __m512i xb = _mm512_set1_epi32(x4);
        for (int c = 0; c < C; c++) s[j][c] = _mm512_dpbusd_epi32(s[j][c], w[c], xb);
      }
    }
    for (int c = 0; c < C; c++) {
      const __m512 dw = _mm512_loadu_ps(p + 64 * c);
      for (int j = 0; j < R; j++)
        acc[j][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[j][c]), _mm512_mul_ps(dw, _mm512_set1_ps(x[j][b].d)),
                                    acc[j][c]);
    }
  }
  for (int j = 0; j < R; j++)
    for (int c = 0; c < C; c++) _mm512_storeu_ps(y[j] + 16 * c, acc[j][c]);
}

// Every activation row against one packed panel of 16C rows starting at output row r0.
template <int C>
void vnni_panel_rows(const uint8_t *panel, int64_t nb, int32_t offset, const ActBlock *xq, float *y, int64_t T,
                     int64_t out, int64_t r0) {
  const ActBlock *xs[kGemmTile];
  float *ys[kGemmTile];
  int64_t t = 0;
  auto rows_at = [&](int n) {
    for (int j = 0; j < n; j++) xs[j] = xq + (t + j) * nb, ys[j] = y + (t + j) * out + r0;
  };
  for (; t + kGemmTile <= T; t += kGemmTile) {
    rows_at(kGemmTile);
    vnni_tile<kGemmTile, C>(panel, nb, offset, xs, ys);
  }
  rows_at(int(T - t));
  switch (T - t) {
  case 5: return vnni_tile<5, C>(panel, nb, offset, xs, ys);
  case 4: return vnni_tile<4, C>(panel, nb, offset, xs, ys);
  case 3: return vnni_tile<3, C>(panel, nb, offset, xs, ys);
  case 2: return vnni_tile<2, C>(panel, nb, offset, xs, ys);
  case 1: return vnni_tile<1, C>(panel, nb, offset, xs, ys);
  default: return;
  }
}

// The GEMM's panel from C 16-row groups of an interleaved layout: the values are already one zmm
// per 4 bytes of 16 rows, so packing is a widening, not a transpose. Q4_0: chunk k's low nibbles
// are values 4k..4k+3 (quad k), its high nibbles values 16 + 4k.. (quad 4 + k).
template <DType D, int C>
KF_VNNI512 void pack_rows16_panel(const uint8_t *groups, size_t group_bytes, int64_t nb, uint8_t *dst) {
  constexpr size_t gb = 16 * quant_block_bytes(D);
  for (int64_t b = 0; b < nb; b++) {
    float *d = reinterpret_cast<float *>(dst + size_t(b) * kPanelBlockBytes * C);
    uint8_t *v = dst + size_t(b) * kPanelBlockBytes * C + 64 * C;
    for (int c = 0; c < C; c++) {
      const uint8_t *p = groups + size_t(c) * group_bytes + size_t(b) * gb;
      _mm512_storeu_ps(d + 16 * c, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p))));
      if constexpr (D == DType::Q8_0) {
        for (int k = 0; k < 8; k++)
          _mm512_storeu_si512(v + (k * C + c) * 64, _mm512_xor_si512(_mm512_loadu_si512(p + 32 + 64 * k),
                                                                    _mm512_set1_epi8(char(0x80))));
      } else {
        for (int k = 0; k < 4; k++) {
          const __m512i q = _mm512_loadu_si512(p + 32 + 64 * k);
          _mm512_storeu_si512(v + (k * C + c) * 64, _mm512_and_si512(q, _mm512_set1_epi8(15)));
          _mm512_storeu_si512(v + ((4 + k) * C + c) * 64,
                              _mm512_and_si512(_mm512_srli_epi16(q, 4), _mm512_set1_epi8(15)));
        }
      }
    }
  }
}

#pragma GCC diagnostic pop
#endif  // KF_QUANT_X86

}  // namespace

size_t gemm_panel_bytes(int64_t nb) { return size_t(nb) * kPanelBlockBytes * 2; }

void gemm_panel(DType dt, const uint8_t *w, size_t rb, int C, int64_t nb, const ActBlock *xq, float *y, int64_t T,
                int64_t out, int64_t r0, uint8_t *panel) {
#ifdef KF_QUANT_X86
  const DType base = dtype_block_kind(dt);
  const int32_t offset = base == DType::Q8_0 ? 128 : 8;
  const size_t group_bytes = 16 * rb;
  const bool r16 = dtype_rows16(dt), two = C == 2;
  if (base == DType::Q8_0) {
    if (r16) two ? pack_rows16_panel<DType::Q8_0, 2>(w, group_bytes, nb, panel)
                 : pack_rows16_panel<DType::Q8_0, 1>(w, group_bytes, nb, panel);
    else two ? pack_vnni_panel<DType::Q8_0, 2>(w, rb, nb, panel) : pack_vnni_panel<DType::Q8_0, 1>(w, rb, nb, panel);
  } else {
    if (r16) two ? pack_rows16_panel<DType::Q4_0, 2>(w, group_bytes, nb, panel)
                 : pack_rows16_panel<DType::Q4_0, 1>(w, group_bytes, nb, panel);
    else two ? pack_vnni_panel<DType::Q4_0, 2>(w, rb, nb, panel) : pack_vnni_panel<DType::Q4_0, 1>(w, rb, nb, panel);
  }
  if (two) vnni_panel_rows<2>(panel, nb, offset, xq, y, T, out, r0);
  else vnni_panel_rows<1>(panel, nb, offset, xq, y, T, out, r0);
#else
  (void)w, (void)rb, (void)C, (void)nb, (void)xq, (void)y, (void)T, (void)out, (void)r0, (void)panel;
  raise(KF_ERR_INTERNAL, "cannot run the int8 GEMM on %s weights: this build has no AVX512-VNNI kernels",
        dtype_name(dt));
#endif
}

}  // namespace quant
}  // namespace kf
