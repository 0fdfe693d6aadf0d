// cpu_scratch.h — a growable buffer lent to one kernel call from a process-wide free list.
//
// The matmuls that convert their activations first (bf16 for vdpbf16ps, int8 blocks for quantized
// weights) need a buffer of T x K per call. A thread_local one is fresh memory on every new calling
// thread (Deno runs FFI calls on a pool of threads that come and go), so prefill paid page faults
// on every call; a fresh allocation per call is worse. Buffers lent from one free list are reused by
// whichever thread calls next: after the first call of a size, nothing is allocated or faulted in.
// Held for the process's life; at most one buffer per concurrent caller.
#pragma once

#include <cstddef>
#include <mutex>
#include <utility>
#include <vector>

namespace kf {

class ScratchLease {
 public:
  // At least `bytes` bytes, 16-byte aligned (new[]'s alignment). Grows on the calling thread; may
  // throw std::bad_alloc there (never inside a worker).
  explicit ScratchLease(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex());
      if (!free_list().empty()) {
        buf_ = std::move(free_list().back());
        free_list().pop_back();
      }
    }
    if (buf_.size() < bytes) buf_.resize(bytes);
  }
  ~ScratchLease() {
    std::lock_guard<std::mutex> lock(mutex());
    try {
      free_list().push_back(std::move(buf_));
    } catch (...) {  // no memory to keep it: let it go
    }
  }
  ScratchLease(const ScratchLease &) = delete;
  ScratchLease &operator=(const ScratchLease &) = delete;
  template <class T>
  T *as() {
    return reinterpret_cast<T *>(buf_.data());
  }

 private:
  std::vector<unsigned char> buf_;
  static std::mutex &mutex() {
    static std::mutex m;
    return m;
  }
  static std::vector<std::vector<unsigned char>> &free_list() {
    static std::vector<std::vector<unsigned char>> l;
    return l;
  }
};

}  // namespace kf
