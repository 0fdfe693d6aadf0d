// cpu_quant.h — 8- and 4-bit weights in llama.cpp's block layouts, and the matmul over them.
//
// A quantized row of n values (n a multiple of 32) is n / 32 blocks, each one f16 scale d and 32
// values, exactly ggml's block_q8_0 / block_q4_0, so GGUF tensors of those types can be used as
// they are (no repacking):
//   Q8_0: { f16 d; int8 qs[32]; }   value j = d * qs[j]                                  (34 bytes)
//   Q4_0: { f16 d; uint8 qs[16]; }  value j = d * ((qs[j] & 15) - 8),
//                                   value j + 16 = d * ((qs[j] >> 4) - 8), j < 16         (18 bytes)
// Quantization rounds as ggml's reference (quantize_row_q8_0_ref / quantize_row_q4_0_ref).
//
// Matmuls on quantized weights quantize the activations to Q8_0 blocks first (as llama.cpp does)
// and sum exact int8 products per block, scaled by the two blocks' scales in f32.
#pragma once

#include <cstdint>

#include "common.h"
#include "threadpool.h"

namespace kf {

constexpr int64_t kQuantBlock = 32;

struct BlockQ8_0 {
  uint16_t d;  // f16 scale
  int8_t qs[32];
};
struct BlockQ4_0 {
  uint16_t d;  // f16 scale
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ8_0) == 34, "ggml block_q8_0 is 34 bytes");
static_assert(sizeof(BlockQ4_0) == 18, "ggml block_q4_0 is 18 bytes");

// dst: n / 32 blocks of dt (Q8_0 or Q4_0) from src: [n] f32; n a multiple of 32.
void quantize_row(const float *src, DType dt, void *dst, int64_t n);
// dst: [n] f32 from n / 32 blocks of dt (Q8_0, Q4_0), or n / 256 blocks (Q4_K, Q6_K).
void dequantize_row(const void *src, DType dt, float *dst, int64_t n);

// llama.cpp's k-quants, which kvfold reads from GGUF files and converts at load:
//   Q4_K: { f16 d, dmin; u8 scales[12]; u8 qs[128] }: 8 sub-blocks of 32, each with a 6-bit scale
//         s and min m packed in `scales`; value = d * s * q - dmin * m, q a 4-bit code (the 64
//         values of sub-blocks 2i, 2i + 1 share 32 bytes: low nibbles, then high)      (144 bytes)
//   Q6_K: { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }: 16 sub-blocks of 16, value =
//         d * scale * (q - 32), q a 6-bit code (4 low bits in ql, 2 high bits in qh)   (210 bytes)
constexpr int64_t kKQuantBlock = 256;
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[128];
};
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};
static_assert(sizeof(BlockQ4_K) == 144, "ggml block_q4_K is 144 bytes");
static_assert(sizeof(BlockQ6_K) == 210, "ggml block_q6_K is 210 bytes");
// Bytes of one block of a row-major block format (Q8_0, Q4_0, Q4_K or Q6_K).
constexpr size_t quant_block_bytes(DType t) {
  return t == DType::Q8_0   ? sizeof(BlockQ8_0)
         : t == DType::Q4_0 ? sizeof(BlockQ4_0)
         : t == DType::Q6_K ? sizeof(BlockQ6_K)
                            : sizeof(BlockQ4_K);
}
// Sub-block j's (0..7) 6-bit scale and min from a Q4_K block's packed `scales`.
void q4_k_scale_min(const uint8_t *scales, int j, uint8_t *sc, uint8_t *m);
// q[l] = value l's 6-bit code (0..63; the value is d * scales[l / 16] * (q[l] - 32)) of a Q6_K block.
void q6_k_codes(const BlockQ6_K &x, uint8_t *q);

// y[t][o] = sum_i x[t][i] * W[o][i] (+ bias[o]) for W in Q8_0 / Q4_0 rows ([out, in / 32] blocks),
// or the 16-row interleaved layouts below (always the AVX512-VNNI kernels, whatever is forced);
// x rows lda floats apart. in must be a multiple of 32 (256 for Q4_K_R16 / Q6_K_R16; else KF_ERR_INTERNAL: the
// loader refuses such models first). Rows of W are split over the pool in fixed blocks, so results do not depend
// on the thread count. Uses vpdpbusd when cpu_int8_vnni(), else AVX2 maddubs, else plain loops;
// with AVX512-VNNI and T >= 3, a GEMM over repacked weight panels (same bits as the row kernels).
void matmul_quant(ThreadPool &pool, const float *x, int64_t lda, const void *W, DType dt, float *y, int64_t T,
                  int64_t in, int64_t out, const float *bias);

struct MatmulProduct;  // cpu_ops.h
// matmul_quant of the products p[0..n) (every one quantized) of one x [T, in]: x quantized once for
// all of them (prefill's q, k and v; gate and up), then each product as matmul_quant runs it.
void matmul_quant_products(ThreadPool &pool, const float *x, int64_t T, int64_t in, const MatmulProduct *p, int n);

// The matrix-vector pieces of matmul_quant, for products that share one x (cpu_matvec.cpp):
// - quantize_act_rows: xq[T][in / 32] <- T rows of x (lda floats apart) as activation blocks;
// - matmul_quant_rows: rows [r0, r1) of y over xq (r0 a multiple of 16, r1 likewise or `out`), with
//   the same kernels and bits as matmul_quant at that T;
// - matmul_quant_rows_apply: whether those apply (T <= kQuantMatvecMaxT, rows of whole blocks, the
//   interleaved layouts' needs); otherwise matmul_quant runs (and names what is wrong).
namespace quant {
struct ActBlock;
}
constexpr int64_t kQuantMatvecMaxT = 2;
void quantize_act_rows(const float *x, int64_t lda, int64_t in, int64_t T, quant::ActBlock *xq);
void quantize_act_row(const float *x, int64_t n, quant::ActBlock *y);  // one row (cpu_quant_act.cpp)
bool matmul_quant_rows_apply(DType dt, int64_t T, int64_t in, int64_t out);
void matmul_quant_rows(const quant::ActBlock *xq, int64_t nb, const void *W, DType dt, float *y, int64_t T,
                       int64_t out, const float *bias, int64_t r0, int64_t r1);

// The 16-row interleaved layouts (DType::Q8_0_R16 / Q4_0_R16), which the CPU loader makes of each
// quantized matrix whose rows are a multiple of 16 where quant_rows16_wanted(). The R / 16 groups of
// 16 rows take the same bytes as 16 row-major rows; group g's block b (groups in order, then blocks)
// is the 16 rows' blocks b rearranged:
//   u16 d[16] (row r's f16 scale at 2r), then 64-byte chunks k = 0.. (8 for Q8_0, 4 for Q4_0), where
//   chunk k holds row r's qs[4k, 4k + 4) at offset 4r
// so one zmm load gives 16 rows' next 4 bytes and the vpdpbusd lanes are the 16 outputs (no
// horizontal sums), and decoding reads one sequential run per thread instead of 8 row streams:
// 1.1B shapes, one thread, cold: Q4_0 13 -> 42 G weights/s, Q8_0 16 -> 25. Same bits as row-major.
// Q4_K_R16 (from a Q4_K GGUF matrix) is the same idea per 256-value block, with the packed 6-bit
// scales and mins unpacked to bytes (148 bytes per 256 values instead of 144; cpu_quant_vnni512.cpp),
// and Q6_K_R16 (from Q6_K: 210 bytes, as stored, its 4-bit and 2-bit parts apart).
// dt: Q8_0, Q4_0 (dst may be src), Q4_K or Q6_K (dst of rows * dtype_row_bytes(Q*_K_R16, cols) bytes);
// rows a multiple of 16, cols of the block.
void interleave_rows16(ThreadPool &pool, DType dt, const void *src, int64_t rows, int64_t cols, void *dst);
// dst: row r of an interleaved Q8_0_R16 / Q4_0_R16 matrix w as row-major blocks.
void deinterleave_row16(DType dt, const void *w, int64_t r, int64_t cols, void *dst);
// dst: [cols] f32, row r of an interleaved matrix (the values dequantize_row gives the row-major one).
void rows16_row_to_f32(DType dt, const void *w, int64_t r, int64_t cols, float *dst);
// Whether matmul_quant runs the AVX512-VNNI kernels here (the interleaved layouts pay only there).
bool quant_rows16_wanted();

// Tests only: the int8 kernel matmul_quant uses, whatever cpu_path() says: "amx" (vnni512, with the
// AMX GEMM on interleaved weights from T = 8), "vnni512" (AVX512-VNNI on ymm, and its GEMM from
// T = 3; no AMX), "vnni512-rows" (the same without the GEMM), "avxvnni" (VEX
// AVX-VNNI), "maddubs" (AVX2), "scalar", or NULL for the automatic choice.
// Returns false (and changes nothing) when this CPU lacks the kernel's instructions. The forced
// kernel applies to row-major weights; quant_rows16_wanted() follows it (a model loaded while another
// kernel is forced stays row-major).
bool quant_force_kernel(const char *name);

}  // namespace kf
