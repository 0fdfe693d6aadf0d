// threadpool.h — a small fork-join pool for the CPU kernels.
//
// Decoding one token opens about a hundred parallel regions of 50–300 µs each, so the cost that
// matters is the latency of starting and joining a region, not throughput of a task queue:
// - n_threads - 1 persistent workers; the calling thread is thread 0 and does its share of the work.
// - A region is published by bumping an atomic generation counter. Idle workers spin on it (with
//   _mm_pause) for about a millisecond before sleeping on a condition variable, so back-to-back
//   regions start in well under a microsecond while a pool left idle costs no CPU. A pool with more
//   threads than the machine has cores never spins (it would starve the threads it waits for).
// - Nothing is allocated per region: the job is a function pointer plus a context pointer to the
//   caller's stack, and the caller does not return before every worker has finished with it.
//
// Usage rules
// - One pool is driven by one caller thread at a time (the engine owns a pool; calls on one engine
//   are serialised by the session rules). Two pools may coexist and run concurrently.
// - fn must not throw: an exception escaping fn on a worker ends the process (std::terminate).
//   Kernels report nothing from inside a region; validate arguments before opening one.
// - Calling parallel_for / run_per_thread of the same pool from inside fn does not deadlock: the
//   nested call runs inline on the current thread. A nested parallel_for passes that thread's own
//   index; a nested run_per_thread runs every share (0..n-1) in turn on this one thread, so a
//   run_per_thread body that may be nested must not use scratch(thread).
// - scratch(thread) is a per-thread buffer of scratch_bytes() bytes (64-byte aligned), allocated
//   once at construction, that a kernel may use for the duration of one region (e.g. packed GEMM
//   panels). Its contents do not survive from one region to the next.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
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

  // Calls fn(task, thread) once for every task in [0, n_tasks), spread over all threads (the
  // caller is thread 0) by an atomic counter, so uneven tasks balance. Returns when all are done.
  template <class F>
  void parallel_for(int64_t n_tasks, F &&fn) {
    if (n_tasks <= 0) return;
    using Fn = std::remove_reference_t<F>;
    int inline_thread = 0;
    if (n_tasks == 1 || n_threads_ == 1 || nested(&inline_thread)) {
      for (int64_t i = 0; i < n_tasks; i++) fn(i, inline_thread);
      return;
    }
    struct Ctx {
      Fn *fn;
      int64_t n;
      alignas(64) std::atomic<int64_t> next;
    } ctx{&fn, n_tasks, {0}};
    run(
        [](void *p, int thread) {
          Ctx &c = *static_cast<Ctx *>(p);
          for (;;) {
            const int64_t i = c.next.fetch_add(1, std::memory_order_relaxed);
            if (i >= c.n) break;
            (*c.fn)(i, thread);
          }
        },
        &ctx);
  }

  // Calls fn(thread, n_threads) exactly once on every thread of the pool (thread 0 = the caller),
  // for kernels that partition work statically (contiguous row blocks stream better).
  template <class F>
  void run_per_thread(F &&fn) {
    using Fn = std::remove_reference_t<F>;
    int inline_thread = 0;
    if (n_threads_ == 1 || nested(&inline_thread)) {
      // Nested: this thread does every share itself.
      for (int t = 0; t < n_threads_; t++) fn(t, n_threads_);
      return;
    }
    struct Ctx {
      Fn *fn;
      int n;
    } ctx{&fn, n_threads_};
    run([](void *p, int thread) { Ctx &c = *static_cast<Ctx *>(p); (*c.fn)(thread, c.n); }, &ctx);
  }

  // Per-thread scratch, valid for the pool's lifetime; see the usage rules above.
  void *scratch(int thread) const { return scratch_ + size_t(thread) * kScratchBytes; }
  static constexpr size_t scratch_bytes() { return kScratchBytes; }

 private:
  using JobFn = void (*)(void *ctx, int thread);

  // Runs job(ctx, t) on every thread t and waits for all of them.
  void run(JobFn job, void *ctx);
  // True when the current thread is already inside a region of this pool; *thread gets its index.
  bool nested(int *thread) const;
  void worker_main(int id);

  int n_threads_ = 1;
  std::chrono::microseconds spin_for_{0};  // idle spin before sleeping; 0 when threads > cores
  std::vector<std::thread> workers_;
  unsigned char *scratch_ = nullptr;

  // The published job: written by the caller before bumping gen_, read by workers after seeing it.
  JobFn job_ = nullptr;
  void *job_ctx_ = nullptr;
  bool stop_ = false;

  alignas(64) std::atomic<uint32_t> gen_{0};  // bumped once per region (and once to stop)
  alignas(64) std::atomic<int> pending_{0};   // workers still running the current region
  alignas(64) std::atomic<int> sleepers_{0};  // workers blocked on cv_ (caller only locks when > 0)
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace kf
