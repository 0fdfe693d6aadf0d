// cpu_quant_vnni512.cpp — the int8 kernels that read 16 weight rows per AVX512-VNNI instruction
// (cpu_quant_vnni512.h): the prefill GEMM over repacked panels, and the 16-row interleaved weight
// layouts (Q8_0_R16, Q4_0_R16, Q4_K_R16) with their group kernels. Portable code (the interleaving itself)
// builds everywhere; the kernels only where the compiler targets x86-64, each with its own target
// attribute, and run only where cpu_features() says the CPU has AVX512-VNNI.
#include "cpu_quant_vnni512.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_features.h"
#include "cpu_matvec.h"

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

#define KF_VNNI512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
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

// S groups' read positions (p[s], moved on block by block) and their accumulators for NT activation rows
// (lanes = the group's 16 outputs): what the group kernels below share. y[s * NT + j] gets group s's
// outputs for x[j].
template <int NT, int S>
struct GroupSums {
  static_assert(S == 1 || NT == 1, "two streams take one activation row");
  const uint8_t *p[S];
  __m512 acc[S][NT];

  KF_VNNI512 explicit GroupSums(const uint8_t *const *groups) {
    for (int s = 0; s < S; s++) {
      p[s] = groups[s];
      for (int j = 0; j < NT; j++) acc[s][j] = _mm512_setzero_ps();
    }
  }
  KF_VNNI512 void store(float *const *y) const {
    for (int s = 0; s < S; s++)
      for (int j = 0; j < NT; j++) _mm512_storeu_ps(y[s * NT + j], acc[s][j]);
  }
};

// Decode over S groups (S = 2: two streams far apart, read in lockstep; then NT = 1): per block, one
// zmm of 16 scales, 8 (Q8_0) or 4 (Q4_0, two nibble halves) loads, and 8 vpdpbusd per activation row
// whose lanes are the 16 outputs; no horizontal sums. The int sums go in two chains so each block's
// dots do not wait on one another. Then the block's acc = fma(float(dot), d_w * d_x, acc), in block
// order, as the row kernels and the GEMM do; each (group, row) accumulator takes the same steps
// whatever S and NT are. y[s * NT + j] gets group s's outputs for x[j].
template <DType D, int NT, int S, bool L2>
KF_VNNI512 void rows16(const uint8_t *const *groups, int64_t nb, const ActBlock *const *x, float *const *y) {
  constexpr size_t gb = 16 * quant_block_bytes(D);
  constexpr int32_t offset = D == DType::Q8_0 ? 128 : 8;
  GroupSums<NT, S> g(groups);
  auto &p = g.p;
  auto &acc = g.acc;
  for (int64_t b = 0; b < nb; b++) {
    // A group is one sequential stream: every line of the block kDecodePrefetchBytes on (and
    // kDecodeNearPrefetchBytes on into L1 where the far one goes to L2: decode_prefetch_near_too).
    // Q8_0's 9 lines in one burst (spread over the loads as Q4_0's and Q4_K's: 134M q8_0 decode
    // 0.94x in both A/B orders); Q4_0's 5 each before its values are read.
    __m512 dw[S];
    __m512i s0[S][NT], s1[S][NT];
    int32_t xd[NT][8];
    for (int j = 0; j < NT; j++) std::memcpy(xd[j], x[j][b].qs, 32);
    for (int s = 0; s < S; s++) {
      if constexpr (D == DType::Q8_0)
        for (size_t l = 0; l < gb; l += 64) decode_prefetch_near_too<L2>(p[s] + l);
      else decode_prefetch_near_too<L2>(p[s]);
      dw[s] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p[s])));
      for (int j = 0; j < NT; j++) {
        s0[s][j] = _mm512_set1_epi32(-offset * x[j][b].sum);
        s1[s][j] = _mm512_setzero_si512();
      }
    }
    if constexpr (D == DType::Q8_0) {
      for (int k = 0; k < 8; k += 2)
        for (int s = 0; s < S; s++) {
          const __m512i v0 = _mm512_xor_si512(_mm512_loadu_si512(p[s] + 32 + 64 * k), _mm512_set1_epi8(char(0x80)));
          const __m512i v1 = _mm512_xor_si512(_mm512_loadu_si512(p[s] + 96 + 64 * k), _mm512_set1_epi8(char(0x80)));
          for (int j = 0; j < NT; j++) {
            s0[s][j] = _mm512_dpbusd_epi32(s0[s][j], v0, _mm512_set1_epi32(xd[j][k]));
            s1[s][j] = _mm512_dpbusd_epi32(s1[s][j], v1, _mm512_set1_epi32(xd[j][k + 1]));
          }
        }
    } else {
      // The high nibbles stay in place (16 x their value: one AND, no shift per load); the
      // exact int sum is shifted back once per block.
      for (int k = 0; k < 4; k++)
        for (int s = 0; s < S; s++) {
          decode_prefetch_near_too<L2>(p[s] + 32 + 64 * k);
          const __m512i q = _mm512_loadu_si512(p[s] + 32 + 64 * k);
          const __m512i lo = _mm512_and_si512(q, _mm512_set1_epi8(15));
          const __m512i hi16 = _mm512_andnot_si512(_mm512_set1_epi8(15), q);
          for (int j = 0; j < NT; j++) {
            s0[s][j] = _mm512_dpbusd_epi32(s0[s][j], lo, _mm512_set1_epi32(xd[j][k]));
            s1[s][j] = _mm512_dpbusd_epi32(s1[s][j], hi16, _mm512_set1_epi32(xd[j][4 + k]));
          }
        }
      for (int s = 0; s < S; s++)
        for (int j = 0; j < NT; j++) s1[s][j] = _mm512_srai_epi32(s1[s][j], 4);
    }
    for (int s = 0; s < S; s++) {
      for (int j = 0; j < NT; j++)
        acc[s][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0[s][j], s1[s][j])),
                                    _mm512_mul_ps(dw[s], _mm512_set1_ps(x[j][b].d)), acc[s][j]);
      p[s] += gb;
    }
  }
  g.store(y);
}
// Q4_K_R16 over S groups (as rows16): per 256-value block, the 16 rows' d and dmin, then per pair of
// sub-blocks 8 loads of 64 bytes (low nibbles: sub-block 2i, high: 2i + 1) against the two
// activation blocks; each sub-block adds (d * sc) * d_x * dot - (dmin * m) * d_x * sum(x).
template <int NT, int S, bool L2>
KF_VNNI512 void rows16_q4_k(const uint8_t *const *groups, int64_t nb, const ActBlock *const *x, float *const *y) {
  GroupSums<NT, S> g(groups);
  auto &p = g.p;
  auto &acc = g.acc;
  const __m512i low4 = _mm512_set1_epi8(15);
  auto bytes_ps = [](const uint8_t *q) KF_VNNI512 {  // 16 bytes as 16 floats
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(q))));
  };
  for (int64_t b = 0; b < nb; b++) {
    // The block's 37 lines fetched ahead as it is read (5 before its header, 8 before each pair of
    // sub-blocks): 37 prefetches in one burst stall on the fill buffers.
    __m512 d[S], dmin[S];
    for (int s = 0; s < S; s++) {
      for (size_t l = 0; l < kQ4kValues; l += 64) decode_prefetch_near_too<L2>(p[s] + l);
      d[s] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p[s])));
      dmin[s] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p[s] + 32)));
    }
    for (int i = 0; i < 4; i++) {
      __m512i s0[S][NT], s1[S][NT];
      int32_t x0[NT][8], x1[NT][8];
      for (int j = 0; j < NT; j++) {
        std::memcpy(x0[j], x[j][8 * b + 2 * i].qs, 32);
        std::memcpy(x1[j], x[j][8 * b + 2 * i + 1].qs, 32);
      }
      for (int s = 0; s < S; s++) {
        for (int j = 0; j < NT; j++) s0[s][j] = s1[s][j] = _mm512_setzero_si512();
        for (int k = 0; k < 8; k++) decode_prefetch_near_too<L2>(p[s] + kQ4kValues + 64 * (8 * i + k));
      }
      for (int k = 0; k < 8; k++)
        for (int s = 0; s < S; s++) {
          const __m512i q = _mm512_loadu_si512(p[s] + kQ4kValues + 64 * (8 * i + k));
          const __m512i lo = _mm512_and_si512(q, low4), hi16 = _mm512_andnot_si512(low4, q);  // as rows16's Q4_0
          for (int j = 0; j < NT; j++) {
            s0[s][j] = _mm512_dpbusd_epi32(s0[s][j], lo, _mm512_set1_epi32(x0[j][k]));
            s1[s][j] = _mm512_dpbusd_epi32(s1[s][j], hi16, _mm512_set1_epi32(x1[j][k]));
          }
        }
      for (int s = 0; s < S; s++) {
        for (int j = 0; j < NT; j++) s1[s][j] = _mm512_srai_epi32(s1[s][j], 4);
        for (int h = 0; h < 2; h++) {
          const int sub = 2 * i + h;
          const __m512 ds = _mm512_mul_ps(d[s], bytes_ps(p[s] + kQ4kScales + 16 * sub));
          const __m512 dm = _mm512_mul_ps(dmin[s], bytes_ps(p[s] + kQ4kMins + 16 * sub));
          for (int j = 0; j < NT; j++) {
            const ActBlock &a = x[j][8 * b + sub];
            acc[s][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(h ? s1[s][j] : s0[s][j]),
                                        _mm512_mul_ps(ds, _mm512_set1_ps(a.d)), acc[s][j]);
            acc[s][j] = _mm512_fnmadd_ps(dm, _mm512_set1_ps(a.d * float(a.sum)), acc[s][j]);
          }
        }
      }
    }
    for (int s = 0; s < S; s++) p[s] += kQ4kGroupBlock;
  }
  g.store(y);
}
// Four activation bytes in every dword lane, loaded as one vpbroadcastd (through a register array, GCC
// moved them via general registers: 2 extra instructions per broadcast).
KF_VNNI512 inline __m512i broadcast4(const int8_t *q) {
  return _mm512_broadcastd_epi32(_mm_cvtsi32_si128(*reinterpret_cast<const int32_t *>(q)));
}

// Q6_K_R16 over S groups (as rows16): per 256-value block, the 16 rows' d, then per pair of activation
// blocks (a0 = 2i, a1 = 2i + 1: sub-blocks 4i .. 4i + 3) 8 loads of low bits and 4 of high bits, the
// 6-bit codes put together in bytes for vpdpbusd; each sub-block's int dot starts at -32 * (its 16
// activations' sum: ActBlock's sum16, or sum less that), so it is sum((q - 32) * x) exactly, and a0
// adds (d * d_x) * (sc_4i * dot_4i + sc_4i+1 * dot_4i+1) (integers up to 2^25), a1 likewise.
template <int NT, int S, bool L2>
KF_VNNI512 void rows16_q6_k(const uint8_t *const *groups, int64_t nb, const ActBlock *const *x, float *const *y) {
  GroupSums<NT, S> g(groups);
  auto &p = g.p;
  auto &acc = g.acc;
  const __m512i low4 = _mm512_set1_epi8(15), bits45 = _mm512_set1_epi8(0x30);
  auto scales = [](const uint8_t *q) KF_VNNI512 {  // 16 signed bytes as 16 ints
    return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(q)));
  };
  for (int64_t b = 0; b < nb; b++) {
    __m512 d[S];
    for (int s = 0; s < S; s++) {
      for (size_t l = 0; l < kQ6kLow; l += 64) decode_prefetch_near_too<L2>(p[s] + l);
      d[s] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p[s])));
    }
    for (int i = 0; i < 4; i++) {
      // dot[s][j][h]: sub-block 4i + h against x[j] (h = 0, 1: a0's halves; 2, 3: a1's)
      __m512i dot[S][NT][4];
      const int8_t *x0[NT], *x1[NT];  // the activations, broadcast 4 at a time straight from memory
      for (int j = 0; j < NT; j++) {
        const ActBlock &a0 = x[j][8 * b + 2 * i], &a1 = x[j][8 * b + 2 * i + 1];
        x0[j] = a0.qs;
        x1[j] = a1.qs;
        const __m512i init[4] = {_mm512_set1_epi32(-32 * a0.sum16), _mm512_set1_epi32(-32 * (a0.sum - a0.sum16)),
                                 _mm512_set1_epi32(-32 * a1.sum16), _mm512_set1_epi32(-32 * (a1.sum - a1.sum16))};
        for (int s = 0; s < S; s++)
          for (int h = 0; h < 4; h++) dot[s][j][h] = init[h];
      }
      for (int s = 0; s < S; s++) {
        for (int k = 0; k < 8; k++) decode_prefetch_near_too<L2>(p[s] + kQ6kLow + 64 * (8 * i + k));
        for (int c = 0; c < 4; c++) decode_prefetch_near_too<L2>(p[s] + kQ6kHigh + 64 * (4 * i + c));
      }
      // Unrolled, so that dot[][][] stays in registers (its index k / 4 must be a constant).
#pragma GCC unroll 4
      for (int c = 0; c < 4; c++)
        for (int s = 0; s < S; s++) {
          const __m512i hb = _mm512_loadu_si512(p[s] + kQ6kHigh + 64 * (4 * i + c));
          // Low-bit chunk 2c's high bits at bits 0-3 of hb, chunk 2c + 1's at 4-7 (16-bit shifts: what
          // crosses a byte falls outside bits 4-5).
          const __m512i h2[2][2] = {{_mm512_slli_epi16(hb, 4), _mm512_slli_epi16(hb, 2)}, {hb, _mm512_srli_epi16(hb, 2)}};
#pragma GCC unroll 2
          for (int e = 0; e < 2; e++) {
            const int k = 2 * c + e;
            const __m512i q = _mm512_loadu_si512(p[s] + kQ6kLow + 64 * (8 * i + k));
            const __m512i v0 = _mm512_or_si512(_mm512_and_si512(q, low4), _mm512_and_si512(h2[e][0], bits45));
            const __m512i v1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(q, 4), low4),
                                               _mm512_and_si512(h2[e][1], bits45));
            for (int j = 0; j < NT; j++) {
              dot[s][j][k / 4] = _mm512_dpbusd_epi32(dot[s][j][k / 4], v0, broadcast4(x0[j] + 4 * k));
              dot[s][j][2 + k / 4] = _mm512_dpbusd_epi32(dot[s][j][2 + k / 4], v1, broadcast4(x1[j] + 4 * k));
            }
          }
        }
      for (int s = 0; s < S; s++)
        for (int h = 0; h < 4; h += 2) {
          const __m512i sc0 = scales(p[s] + kQ6kScales + 16 * (4 * i + h));
          const __m512i sc1 = scales(p[s] + kQ6kScales + 16 * (4 * i + h + 1));
          for (int j = 0; j < NT; j++) {
            const __m512i t = _mm512_add_epi32(_mm512_mullo_epi32(dot[s][j][h], sc0), _mm512_mullo_epi32(dot[s][j][h + 1], sc1));
            const float dx = x[j][8 * b + 2 * i + h / 2].d;
            acc[s][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(d[s], _mm512_set1_ps(dx)), acc[s][j]);
          }
        }
    }
    for (int s = 0; s < S; s++) p[s] += kQ6kGroupBlock;
  }
  g.store(y);
}
#pragma GCC diagnostic pop
#undef KF_VNNI512
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

void rows16_groups(DType dt, const uint8_t *const *groups, int ng, int64_t nb, const ActBlock *const *x, int nt,
                   float *const *y) {
#ifdef KF_QUANT_X86
  with_decode_prefetch([&](auto l2) {
    constexpr bool L2 = decltype(l2)::value;
    // (nt, ng) = (1, 1), (2, 1), (4, 1) or (1, 2); the k-quants' kernels count
    // blocks of 256 values
    const auto run = [&](auto kernel1, auto kernel2, auto kernel4, auto kernel_two, int64_t blocks) {
      if (ng == 2) kernel_two(groups, blocks, x, y);
      else if (nt == 4) kernel4(groups, blocks, x, y);
      else if (nt == 2) kernel2(groups, blocks, x, y);
      else kernel1(groups, blocks, x, y);
    };
    if (dt == DType::Q4_K_R16)
      run(rows16_q4_k<1, 1, L2>, rows16_q4_k<2, 1, L2>, rows16_q4_k<4, 1, L2>, rows16_q4_k<1, 2, L2>, nb / 8);
    else if (dt == DType::Q6_K_R16)
      run(rows16_q6_k<1, 1, L2>, rows16_q6_k<2, 1, L2>, rows16_q6_k<4, 1, L2>, rows16_q6_k<1, 2, L2>, nb / 8);
    else if (dtype_block_kind(dt) == DType::Q8_0)
      run(rows16<DType::Q8_0, 1, 1, L2>, rows16<DType::Q8_0, 2, 1, L2>, rows16<DType::Q8_0, 4, 1, L2>,
          rows16<DType::Q8_0, 1, 2, L2>, nb);
    else
      run(rows16<DType::Q4_0, 1, 1, L2>, rows16<DType::Q4_0, 2, 1, L2>, rows16<DType::Q4_0, 4, 1, L2>,
          rows16<DType::Q4_0, 1, 2, L2>, nb);
  });
#else
  (void)groups, (void)ng, (void)nb, (void)x, (void)nt, (void)y;
  raise(KF_ERR_INTERNAL, "cannot run the interleaved %s kernel: this build has no AVX512-VNNI kernels", dtype_name(dt));
#endif
}

}  // namespace quant
}  // namespace kf
