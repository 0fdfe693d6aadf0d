// threadpool.h — a small fork-join pool for the CPU kernels.
//
// Decoding one token opens about a hundred parallel regions of 50–300 µs each, so the cost that
// matters is the latency of starting and joining a region, not throughput of a task queue:
// - n_threads - 1 persistent workers; the calling thread is thread 0 and does its share of the work.
// - A region is published by bumping an atomic generation counter. Idle workers spin on it (with
//   _mm_pause) before sleeping on a condition variable, so back-to-back regions start within a
//   fraction of a microsecond while a pool left idle costs no CPU. A pool with more threads than
//   the machine has cores never spins (it would starve the threads it waits for).
// - Work is handed out in parts claimed from an atomic counter, by the caller too, and a region
//   ends when every part is done: a worker that has not woken up (descheduled by other load on
//   the machine) simply takes no part, instead of holding everyone up for a scheduler time slice.
// - Nothing is allocated per region: the job is a function pointer plus a context pointer to the
//   caller's stack, and the caller does not return before every worker has let go of it.
//
// Usage rules
// - Any number of caller threads may share one pool (kvfold.h lets different sessions of one engine
//   run concurrently): a mutex serialises whole regions, so each region still runs alone on all
//   threads and per-thread scratch is never shared. Callers that need parallel throughput should
//   use separate pools; pools are independent and may run concurrently.
// - fn must not throw: an exception escaping fn on a worker ends the process (std::terminate).
//   Kernels report nothing from inside a region; validate arguments before opening one.
// - Calling parallel_for / run_per_thread of the same pool from inside fn does not deadlock: the
//   nested call runs inline on the current thread.
// - scratch(thread) is a per-thread buffer of scratch_bytes() bytes (64-byte aligned), allocated
//   once at construction, that a kernel may use for the duration of one region (e.g. packed GEMM
//   panels), indexed by the `thread` argument parallel_for passes. Its contents do not survive from
//   one region to the next.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace kf {

class ThreadPool {
 public:
  // Bytes of per-thread scratch (see scratch()). Large enough for a packed GEMM panel.
  static constexpr size_t kScratchBytes = size_t(512) << 10;

  // n_threads counts the calling thread; values < 1 are treated as 1. May throw std::system_error
  // (thread creation) or std::bad_alloc; nothing is left running on failure.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool &) = delete;
  ThreadPool &operator=(const ThreadPool &) = delete;

  // Threads taking part in a region, the caller included.
  int size() const { return n_threads_; }

  // Calls fn(task, thread) once for every task in [0, n_tasks); `thread` in [0, size()) is the
  // thread running it (0 = the caller), for per-thread buffers such as scratch(thread). Tasks are
  // claimed one at a time from an atomic counter, so uneven tasks balance. Returns when all are
  // done.
  template <class F>
  void parallel_for(int64_t n_tasks, F &&fn) {
    if (n_tasks <= 0) return;
    int inline_thread = 0;
    if (nested(&inline_thread)) {
      for (int64_t i = 0; i < n_tasks; i++) fn(i, inline_thread);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    Fn *f = &fn;
    run([](void *p, int64_t task, int thread) { (**static_cast<Fn **>(p))(task, thread); }, &f, n_tasks);
  }

  // Calls fn(part, n_parts) once for every part in [0, n_parts), n_parts = size(), for kernels
  // that partition work statically (one contiguous block of rows per part streams best). Normally
  // part p runs on thread p; when a worker is late (descheduled), other threads run its part, so
  // `part` identifies the work, not the thread: do not index scratch() with it.
  template <class F>
  void run_per_thread(F &&fn) {
    const int n = n_threads_;
    int inline_thread = 0;
    if (nested(&inline_thread)) {
      for (int p = 0; p < n; p++) fn(p, n);
      return;
    }
    struct Ctx {
      std::remove_reference_t<F> *fn;
      int n;
    } ctx{&fn, n};
    run([](void *p, int64_t part, int) { Ctx &c = *static_cast<Ctx *>(p); (*c.fn)(int(part), c.n); }, &ctx, n);
  }

  // Calls fn(r0, r1) over [0, rows) in one contiguous block per part (lengths a multiple of `align`),
  // for kernels that stream rows of memory front to back, which the prefetchers follow best; or
  // once, fn(0, rows), on the calling thread when the pool has one thread or the work touches fewer
  // than kInlineBytes, where waking the pool costs more than it saves.
  static constexpr size_t kInlineBytes = size_t(64) << 10;
  template <class F>
  void run_row_blocks(int64_t rows, int64_t align, size_t bytes, F &&fn) {
    if (n_threads_ == 1 || bytes < kInlineBytes) return fn(int64_t(0), rows);
    run_per_thread([&](int part, int parts) {
      const int64_t per = ((rows + parts - 1) / parts + align - 1) / align * align;
      const int64_t r0 = std::min(rows, int64_t(part) * per), r1 = std::min(rows, r0 + per);
      if (r0 < r1) fn(r0, r1);
    });
  }

  // Per-thread scratch, valid for the pool's lifetime; see the usage rules above.
  void *scratch(int thread) const;
  static constexpr size_t scratch_bytes() { return kScratchBytes; }

  // For its lifetime, the calling thread runs every parallel_for, run_per_thread and run_row_blocks
  // of this pool inline, as a nested call does, and scratch() of any index gives it `scratch`
  // (scratch_bytes(), 64-byte aligned) instead of a pool thread's buffer: a training replica runs its
  // passes this way beside other replicas, neither waiting for the pool nor sharing its scratch.
  class InlineScope {
   public:
    InlineScope(const ThreadPool &pool, void *scratch);
    ~InlineScope();
    InlineScope(const InlineScope &) = delete;
    InlineScope &operator=(const InlineScope &) = delete;

   private:
    const ThreadPool *prev_pool_;
    int prev_thread_;
    void *prev_scratch_;
  };

 private:
  using JobFn = void (*)(void *ctx, int64_t part, int thread);

  // Runs job(ctx, part, thread) for every part in [0, n_parts) on the caller and the workers, and
  // returns when all parts are done and no worker holds ctx any more. Holds call_mu_ throughout.
  void run(JobFn job, void *ctx, int64_t n_parts);
  // Claims and runs parts of the open region until none are left; returns how many it ran.
  int64_t work(int thread);
  // True when the current thread is already inside a region of this pool; *thread gets its index.
  bool nested(int *thread) const;
  void worker_main(int id);

  int n_threads_ = 1;
  std::chrono::microseconds spin_for_{0};  // idle spin before sleeping; 0 when threads > cores
  std::vector<std::thread> workers_;
  unsigned char *scratch_ = nullptr;

  // The open region: written by the caller while the region is closed and no worker is inside
  // (refs_ == 0), published by the release of the state_ store that opens it.
  JobFn job_ = nullptr;
  void *job_ctx_ = nullptr;
  int64_t n_parts_ = 0;
  std::atomic<bool> stop_{false};  // set before the final generation bump

  // state_ = generation << 1 | open. The generation is bumped by every region (and by stop); a
  // worker wakes on a new generation, then enters only while the region is still open.
  alignas(64) std::atomic<uint64_t> state_{0};
  alignas(64) std::atomic<int64_t> next_part_{0};  // next unclaimed part
  alignas(64) std::atomic<int64_t> parts_done_{0};  // parts finished (by any thread)
  alignas(64) std::atomic<int> refs_{0};            // workers inside the region (may touch job_ctx_)
  alignas(64) std::atomic<int> sleepers_{0};        // workers blocked on cv_ (caller locks only when > 0)
  std::mutex mu_;                                   // the sleep/wake handshake with cv_
  std::condition_variable cv_;
  std::mutex call_mu_;  // one region at a time when several threads drive this pool
};

}  // namespace kf
