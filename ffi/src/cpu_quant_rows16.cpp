// cpu_quant_rows16.cpp — decode's kernels over the 16-row interleaved int8 layouts (Q8_0_R16, Q4_0_R16,
// Q4_K_R16, Q6_K_R16; cpu_quant_vnni512.h): one 64-byte load holds 16 rows' next 4 bytes and each
// vpdpbusd lane is one output row, so a group streams once with no horizontal sums. Built only where
// the compiler targets x86-64, run only where cpu_features() says the CPU has AVX512-VNNI.
#include <cstring>

#include "cpu_matvec.h"
#include "cpu_quant_vnni512.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define KF_QUANT_X86 1
#endif

namespace kf::quant {

namespace {

#ifdef KF_QUANT_X86
// GCC 12 reports the `_mm512_undefined_*` pass-through operands inside AVX-512 intrinsics as "may be
// used uninitialized" (a false positive in its headers, not in this code).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

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
#endif  // KF_QUANT_X86

}  // namespace

void rows16_groups(DType dt, const uint8_t *const *groups, int ng, int64_t nb, const ActBlock *const *x, int nt,
                   float *const *y) {
#ifdef KF_QUANT_X86
  with_decode_prefetch([&](auto l2) {
    constexpr bool L2 = decltype(l2)::value;
    // (nt, ng) = (1, 1), (2, 1), (4, 1) or (1, 2); the k-quants' kernels count blocks of 256 values
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

}  // namespace kf::quant
