// weight_arena.h — the memory a model's converted and re-laid weights live in.
//
// Why not new[]: a big malloc block starts 16 bytes past a page boundary, so every 64-byte load of
// a row straddles two cache lines, and a matrix under 4 MiB may hold no whole 2 MiB-aligned page
// for transparent huge pages to back (every 4 KiB of a stream then walks the page tables). The 134M
// on a 2-core Xeon VM decoded bf16 at 89 -> 100 tok/s, q8_0 152 -> 234, q4_0 430 -> 548 once its
// converted weights sat here instead.
// - Pieces are 64-byte aligned and carved in order from chunks that start on a 2 MiB boundary and
//   are advised MADV_HUGEPAGE before their first touch.
// - reserve(bytes) sizes the first chunk for a whole model (one mapping); a piece that does not fit
//   the current chunk gets a new one of at least kChunkBytes.
// - Freed only as a whole, by the destructor.
// - Under AddressSanitizer, everything but the pieces is poisoned and each piece is followed by a
//   kRedzone gap, so an overrun of a weight buffer stops the sanitized build as it did with new[].
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kf {

class WeightArena {
 public:
  static constexpr size_t kAlign = 64;
  static constexpr size_t kChunkBytes = size_t(64) << 20;
#if defined(__SANITIZE_ADDRESS__)
  static constexpr size_t kRedzone = kAlign;
#else
  static constexpr size_t kRedzone = 0;
#endif

  WeightArena() = default;
  ~WeightArena();
  WeightArena(const WeightArena &) = delete;
  WeightArena &operator=(const WeightArena &) = delete;

  // Maps one chunk for `bytes` of pieces (each piece's size rounded up to kAlign) unless the
  // current chunk has that much left. KF_ERR_OUT_OF_MEMORY (an Error) when the mapping fails.
  void reserve(size_t bytes);
  // `bytes` of uninitialised memory, 64-byte aligned, valid until the arena is destroyed.
  // KF_ERR_OUT_OF_MEMORY (an Error) naming `what` when no memory can be mapped.
  uint8_t *alloc(size_t bytes, const char *what);
  // The piece alloc returned last (nullptr before the first).
  uint8_t *last() const { return last_; }
  // Bytes handed out, padding (and redzones) included.
  size_t used() const { return used_total_; }

 private:
  struct Chunk {
    uint8_t *base;
    size_t size;
  };
  void map_chunk(size_t bytes, const char *what);

  std::vector<Chunk> chunks_;
  size_t used_ = 0;  // of chunks_.back()
  size_t used_total_ = 0;
  uint8_t *last_ = nullptr;
};

}  // namespace kf
