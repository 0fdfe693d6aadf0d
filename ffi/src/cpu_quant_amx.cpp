// cpu_quant_amx.cpp — the AMX-INT8 prefill GEMM (cpu_quant_amx.h).
//
// Per 16-row weight group, the panel is unpacked once into what a tile load takes, per 32-value block:
//   f32 s[16] (the rows' scales: d, or Q4_K's d * sc), [f32 m[16]: Q4_K's dmin * m],
//   s8 v[8][64]: row k holds the 16 weight rows' values 4k..4k+3 at 4r (tdpbssd's B layout; the
//   interleaved layouts already store Q8_0 so, Q4_0 and Q4_K nibbles are split and Q4_0's offset of 8
//   taken off, so every format is one signed x signed product).
// Then per 16 activation rows, per block: C = A (16 rows' 32 int8, straight from the activation blocks)
// x B in one tdpbssd, stored, and acc[r] = fma(float(C[r]), s * d_x[r], acc[r]) (Q4_K: then
// acc[r] -= m * d_x[r] * sum(x[r])), block by block in order: the VNNI kernels' int dots and f32 steps.
#include "cpu_quant_amx.h"

#include <algorithm>
#include <cstring>

#include "common.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define KF_AMX_X86 1
#endif

namespace kf::quant {

namespace {
constexpr size_t kTileValues = 8 * 64;  // one block's B tile: 8 rows of 64 bytes
// A block's int sums are scaled kLag blocks after they were stored, from one of kBuffers buffers
// (kBuffers > kLag), so a tile store need not reach the vector loads at once (lags 1 to 7 measured
// alike on one Xeon VM: the per-block scaling on AVX-512, not the tiles, bounds this kernel).
constexpr int64_t kLag = 2, kBuffers = 4;

constexpr bool has_mins(DType dt) { return dt == DType::Q4_K_R16; }
size_t panel_block_bytes(DType dt) { return (has_mins(dt) ? 128 : 64) + kTileValues; }
// Floats of one token tile's activation scales: dx[16 nb], then dm[16 nb] (Q4_K only, the room kept).
size_t tile_scale_floats(int64_t nb) { return size_t(nb) * 16 * 2; }
}  // namespace

size_t amx_panel_bytes(DType dt, int64_t nb) { return size_t(nb) * panel_block_bytes(dt); }
size_t amx_scale_bytes(int64_t T, int64_t nb) {
  return size_t((T + kAmxRows - 1) / kAmxRows) * tile_scale_floats(nb) * sizeof(float);
}

#ifdef KF_AMX_X86
namespace {

#define KF_AMX __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,amx-tile,amx-int8")))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// ldtilecfg's 64 bytes, palette 1: tmm0-3 C (16 x 16 int32), tmm4-5 A (16 rows x 32 int8),
// tmm6-7 B (8 rows x 64 int8).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 32, 32, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 8, 8};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

// One group's panel (layout above) from its interleaved blocks.
KF_AMX void unpack_group(DType dt, const uint8_t *g, int64_t nb, uint8_t *panel) {
  const size_t pb = panel_block_bytes(dt), vo = pb - kTileValues;
  const __m512i low4 = _mm512_set1_epi8(15), eight = _mm512_set1_epi8(8);
  if (dt == DType::Q4_K_R16) {
    for (int64_t b = 0; b < nb / 8; b++, g += kQ4kGroupBlock) {
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(g)));
      const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(g + 32)));
      for (int j = 0; j < 8; j++) {  // sub-block j: the low (even j) or high nibbles of chunks 8(j/2)..+7
        uint8_t *o = panel + size_t(8 * b + j) * pb;
        auto bytes_ps = [](const uint8_t *q) KF_AMX {
          return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(q))));
        };
        _mm512_storeu_ps(o, _mm512_mul_ps(d, bytes_ps(g + kQ4kScales + 16 * j)));
        _mm512_storeu_ps(o + 64, _mm512_mul_ps(dmin, bytes_ps(g + kQ4kMins + 16 * j)));
        for (int k = 0; k < 8; k++) {
          const __m512i q = _mm512_loadu_si512(g + kQ4kValues + 64 * (8 * (j / 2) + k));
          _mm512_storeu_si512(o + vo + 64 * k, _mm512_and_si512(j % 2 ? _mm512_srli_epi16(q, 4) : q, low4));
        }
      }
    }
    return;
  }
  const size_t gb = 16 * quant_block_bytes(dtype_block_kind(dt));
  for (int64_t b = 0; b < nb; b++, g += gb) {
    uint8_t *o = panel + size_t(b) * pb;
    _mm512_storeu_ps(o, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(g))));
    if (dt == DType::Q8_0_R16) {
      std::memcpy(o + vo, g + 32, kTileValues);
      continue;
    }
    for (int k = 0; k < 4; k++) {  // Q4_0: chunk k's low nibbles are values 4k.., its high ones 16 + 4k..
      const __m512i q = _mm512_loadu_si512(g + 32 + 64 * k);
      _mm512_storeu_si512(o + vo + 64 * k, _mm512_sub_epi8(_mm512_and_si512(q, low4), eight));
      _mm512_storeu_si512(o + vo + 64 * (4 + k), _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(q, 4), low4), eight));
    }
  }
}

// tdpbssd's latency is long beside its issue rate, so blocks go through four C tiles in turn: while
// block i + 2 is multiplied and block i stored, block i - kLag (stored kLag steps earlier) is scaled.
// A and B tiles alternate by block parity.
#define KF_AMX_ISSUE(j, c, a, b)                          \
  do {                                                    \
    _tile_zero(c);                                        \
    _tile_loadd(a, x[j].qs, xs);                          \
    _tile_loadd(b, panel + size_t(j) * pb + vo, 64);      \
    _tile_dpbssd(c, a, b);                                \
  } while (0)
// Step i = 4q + k: issue block i + 2 on tile (k + 2) % 4, store tile k (block i) to its buffer, and
// scale block i - kLag, stored kLag steps earlier.
#define KF_AMX_STEP(i, cn, an, bn, cs)                    \
  do {                                                    \
    fetch(i);                                             \
    if ((i) + 2 < nb) KF_AMX_ISSUE((i) + 2, cn, an, bn); \
    _tile_stored(cs, c[(i) % kBuffers], 64);              \
    if ((i) >= kLag) scale((i) - kLag);                   \
  } while (0)

// y[r][0, 16) for activation rows r < rows of the 16 at x (rows nb blocks apart) against one panel.
// dx[16i + r] = x[r][i].d, and for Q4_K dm[16i + r] = x[r][i].d * sum(x[r][i]). Meanwhile the
// pf_lines cache lines at pf are prefetched into L2, a few per block (a burst of them stalls).
template <bool Mins>
KF_AMX void tile_rows(const uint8_t *panel, int64_t nb, const ActBlock *x, const float *dx, const float *dm, float *y,
                      int64_t out, int rows, const uint8_t *pf, int64_t pf_lines) {
  constexpr size_t pb = (Mins ? 128 : 64) + kTileValues, vo = pb - kTileValues;
  const long xs = long(size_t(nb) * sizeof(ActBlock));
  alignas(64) int32_t c[kBuffers][16][16];
  __m512 acc[16];
#pragma GCC unroll 16
  for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
  auto scale = [&](int64_t i) KF_AMX __attribute__((always_inline)) {
    const int32_t(*ci)[16] = c[i % kBuffers];
    const uint8_t *blk = panel + size_t(i) * pb;
    const float *dxi = dx + 16 * i;
    const __m512 s = _mm512_loadu_ps(blk);
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++) {
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(ci[r])), _mm512_mul_ps(s, _mm512_set1_ps(dxi[r])),
                               acc[r]);
      if constexpr (Mins) acc[r] = _mm512_fnmadd_ps(_mm512_loadu_ps(blk + 64), _mm512_set1_ps(dm[16 * i + r]), acc[r]);
    }
  };
  const int64_t pf_step = (pf_lines + nb - 1) / nb;
  auto fetch = [&](int64_t i) KF_AMX __attribute__((always_inline)) {
    for (int64_t l = i * pf_step, e = std::min(pf_lines, l + pf_step); l < e; l++)
      _mm_prefetch(reinterpret_cast<const char *>(pf + 64 * l), _MM_HINT_T1);
  };
  KF_AMX_ISSUE(0, 0, 4, 6);
  if (nb > 1) KF_AMX_ISSUE(1, 1, 5, 7);
  int64_t i = 0;
  for (; i + 4 <= nb; i += 4) {
    KF_AMX_STEP(i, 2, 4, 6, 0);
    KF_AMX_STEP(i + 1, 3, 5, 7, 1);
    KF_AMX_STEP(i + 2, 0, 4, 6, 2);
    KF_AMX_STEP(i + 3, 1, 5, 7, 3);
  }
  for (; i < nb; i++) {
    switch (i & 3) {
    case 0: KF_AMX_STEP(i, 2, 4, 6, 0); break;
    case 1: KF_AMX_STEP(i, 3, 5, 7, 1); break;
    case 2: KF_AMX_STEP(i, 0, 4, 6, 2); break;
    default: KF_AMX_STEP(i, 1, 5, 7, 3); break;
    }
  }
  for (int64_t j = std::max<int64_t>(0, nb - kLag); j < nb; j++) scale(j);
#pragma GCC unroll 16
  for (int r = 0; r < 16; r++)
    if (r < rows) _mm512_storeu_ps(y + r * out, acc[r]);
}
#undef KF_AMX_STEP
#undef KF_AMX_ISSUE

KF_AMX void gemm_groups(DType dt, const uint8_t *groups, size_t group_bytes, int G, int64_t nb, const ActBlock *xq,
                        const float *scales, float *y, int64_t T, int64_t out, int64_t r0, uint8_t *scratch,
                        const uint8_t *fetch, size_t fetch_bytes) {
  const size_t pbytes = amx_panel_bytes(dt, nb);
  for (int g = 0; g < G; g++) unpack_group(dt, groups + size_t(g) * group_bytes, nb, scratch + size_t(g) * pbytes);
  __asm__ volatile("" ::: "memory");  // tileloadd's asm does not say it reads the panels just written
  static const TileConfig cfg;
  _tile_loadconfig(&cfg);
  // Token tiles outside, groups inside: a tile's activation blocks stay in L1/L2 across the G panels.
  // The next weights' lines are dealt out over the tile_rows calls, all fetched by the last.
  const int64_t tiles = (T + kAmxRows - 1) / kAmxRows, calls = tiles * G;
  const int64_t lines = int64_t((fetch_bytes + 63) / 64), per_call = (lines + calls - 1) / calls;
  for (int64_t t = 0; t < tiles; t++) {
    const int rows = int(std::min<int64_t>(kAmxRows, T - t * kAmxRows));
    const ActBlock *x = xq + t * kAmxRows * nb;
    const float *dx = scales + size_t(t) * tile_scale_floats(nb), *dm = dx + 16 * nb;
    for (int g = 0; g < G; g++) {
      const uint8_t *panel = scratch + size_t(g) * pbytes;
      float *yt = y + t * kAmxRows * out + r0 + 16 * g;
      const int64_t l0 = std::min(lines, (t * G + g) * per_call), n = std::min(lines - l0, per_call);
      if (has_mins(dt)) tile_rows<true>(panel, nb, x, dx, dm, yt, out, rows, fetch + 64 * l0, n);
      else tile_rows<false>(panel, nb, x, dx, dm, yt, out, rows, fetch + 64 * l0, n);
    }
  }
  _tile_release();
}

// Per token tile: dx[16i + r] = x[r][i].d, then (Q4_K) dm[16i + r] = d * sum, one gather each.
KF_AMX void act_scales(const ActBlock *xq, int64_t T, int64_t nb, bool mins, float *scales) {
  const __m512i rows16 = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(int32_t(nb * int64_t(sizeof(ActBlock)))));
  for (int64_t t = 0; t < (T + kAmxRows - 1) / kAmxRows; t++) {
    const ActBlock *x = xq + t * kAmxRows * nb;
    float *dx = scales + size_t(t) * tile_scale_floats(nb), *dm = dx + 16 * nb;
    for (int64_t i = 0; i < nb; i++) {
      const __m512 d = _mm512_i32gather_ps(rows16, &x[i].d, 1);
      _mm512_storeu_ps(dx + 16 * i, d);
      if (mins)
        _mm512_storeu_ps(dm + 16 * i, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_i32gather_epi32(rows16, &x[i].sum, 1))));
    }
  }
}

#pragma GCC diagnostic pop
#undef KF_AMX

}  // namespace
#endif  // KF_AMX_X86

void amx_act_scales(const ActBlock *xq, int64_t T, int64_t nb, DType dt, float *scales) {
#ifdef KF_AMX_X86
  act_scales(xq, T, nb, has_mins(dt), scales);
#else
  (void)xq, (void)T, (void)nb, (void)scales;
  raise(KF_ERR_INTERNAL, "cannot run the AMX GEMM on %s weights: this build is not for x86-64", dtype_name(dt));
#endif
}

void amx_gemm_groups(DType dt, const uint8_t *groups, size_t group_bytes, int G, int64_t nb, const ActBlock *xq,
                     const float *scales, float *y, int64_t T, int64_t out, int64_t r0, uint8_t *scratch,
                     const uint8_t *fetch, size_t fetch_bytes) {
#ifdef KF_AMX_X86
  gemm_groups(dt, groups, group_bytes, G, nb, xq, scales, y, T, out, r0, scratch, fetch, fetch_bytes);
#else
  (void)groups, (void)group_bytes, (void)G, (void)nb, (void)xq, (void)scales, (void)y, (void)T, (void)out, (void)r0;
  (void)scratch, (void)fetch, (void)fetch_bytes;
  raise(KF_ERR_INTERNAL, "cannot run the AMX GEMM on %s weights: this build is not for x86-64", dtype_name(dt));
#endif
}

}  // namespace kf::quant
