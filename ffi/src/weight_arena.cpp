// weight_arena.cpp — 64-byte-aligned pieces from 2 MiB-aligned huge-page chunks (see weight_arena.h).
#include "weight_arena.h"

#include <cerrno>
#include <sys/mman.h>

#include "common.h"
#include "json.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define KF_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define KF_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define KF_POISON(p, n) ((void)(p), (void)(n))
#define KF_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace kf {

namespace {

constexpr size_t kHuge = size_t(2) << 20;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

}  // namespace

WeightArena::~WeightArena() {
  for (const Chunk &c : chunks_) {
    KF_UNPOISON(c.base, c.size);  // a later mapping at these addresses must not inherit the poison
    ::munmap(c.base, c.size);
  }
}

void WeightArena::map_chunk(size_t bytes, const char *what) {
  if (bytes > SIZE_MAX / 2) raise(KF_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes for %s", bytes, what);
  const size_t size = round_up(bytes, kHuge);
  chunks_.reserve(chunks_.size() + 1);  // before the mapping: nothing to undo if this throws
  // Over-map by one huge page, then unmap the slack on both sides of the 2 MiB-aligned middle.
  void *m = ::mmap(nullptr, size + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED)
    raise(KF_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes for %s: %s", size, what, errno_text(errno).c_str());
  uint8_t *raw = static_cast<uint8_t *>(m);
  uint8_t *base = reinterpret_cast<uint8_t *>(round_up(reinterpret_cast<uintptr_t>(raw), kHuge));
  if (base > raw) ::munmap(raw, size_t(base - raw));
  if (raw + size + kHuge > base + size) ::munmap(base + size, size_t(raw + size + kHuge - (base + size)));
  advise_huge_pages(base, size);  // base and size are whole huge pages: all of it
  KF_POISON(base, size);
  chunks_.push_back({base, size});
  used_ = 0;
}

void WeightArena::reserve(size_t bytes) {
  if (!chunks_.empty() && chunks_.back().size - used_ >= bytes) return;
  map_chunk(bytes, "the model's weights");
}

uint8_t *WeightArena::alloc(size_t bytes, const char *what) {
  if (bytes > SIZE_MAX / 2) raise(KF_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes for %s", bytes, what);
  const size_t n = round_up(bytes == 0 ? 1 : bytes, kAlign) + kRedzone;
  if (chunks_.empty() || chunks_.back().size - used_ < n) map_chunk(n > kChunkBytes ? n : kChunkBytes, what);
  last_ = chunks_.back().base + used_;
  KF_UNPOISON(last_, bytes);
  used_ += n;
  used_total_ += n;
  return last_;
}

}  // namespace kf
