// threadpool.cpp — worker loop, region open/close; see threadpool.h for the design.
//
// Protocol of one region (caller C, worker W), all under C's call_mu_:
//   C: write job_, job_ctx_, n_parts_, reset counters   (region closed, refs_ == 0: nobody reads them)
//   C: state_ = (gen + 1) << 1 | 1                       (open; release publishes the fields)
//   W: sees the new generation; refs_++; re-reads state_ and enters only if it is still that open
//      region (else refs_--, back to waiting)
//   C, W: claim parts from next_part_, run them, add their count to parts_done_; W: refs_--
//   C: wait parts_done_ == n_parts_; state_ = gen << 1 (closed); wait refs_ == 0; return
// refs_++ then state_ load (W) against state_ store then refs_ load (C), all seq_cst, is a Dekker
// handshake: either W sees the region closed and backs out, or C sees W in refs_ and waits for it.
// A worker descheduled anywhere outside a claimed part therefore never delays the caller.
#include "threadpool.h"

#if defined(__x86_64__) || defined(__SSE__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <new>

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#include <immintrin.h>
#define KF_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define KF_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define KF_CPU_RELAX() ((void)0)
#endif

namespace kf {

namespace {

// Waiting, in three stages:
// - up to kYieldAfter: pure spinning (_mm_pause, ~25 ns each). Regions of one decode step follow
//   each other, and threads finish their parts, within microseconds of one another.
// - up to kSpinFor: spinning with a sched_yield every ~1.5 µs, so that a thread we wait for that
//   shares our core (other processes' load, more threads than cores) gets it soon.
// - then idle workers sleep on the condition variable (the caller keeps yielding until the join).
// A pool with more threads than cores skips the spinning (spin_for_ = 0).
constexpr auto kYieldAfter = std::chrono::microseconds(50);
constexpr auto kSpinFor = std::chrono::microseconds(1000);

// The pool (and thread index) whose region the current thread is running, for nested calls.
thread_local const ThreadPool *tl_pool = nullptr;
thread_local int tl_thread = 0;
thread_local void *tl_scratch = nullptr;  // an InlineScope's own scratch (for tl_pool), else NULL

// Spins (then spins and yields) until done() is true.
template <class Done>
void spin_until(Done &&done, std::chrono::microseconds yield_after) {
  if (done()) return;
  const auto t0 = std::chrono::steady_clock::now();
  for (unsigned spins = 1; !done(); spins++) {
    KF_CPU_RELAX();
    if ((spins & 63) == 0 && std::chrono::steady_clock::now() - t0 >= yield_after) std::this_thread::yield();
  }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  n_threads_ = n_threads < 1 ? 1 : n_threads;
  const unsigned hw = std::thread::hardware_concurrency();
  spin_for_ = hw != 0 && unsigned(n_threads_) > hw ? std::chrono::microseconds(0) : kSpinFor;
  scratch_ = static_cast<unsigned char *>(::operator new(size_t(n_threads_) * kScratchBytes, std::align_val_t(64)));
  try {
    workers_.reserve(size_t(n_threads_ - 1));
    for (int i = 1; i < n_threads_; i++) workers_.emplace_back([this, i] { worker_main(i); });
  } catch (...) {
    // Stop whatever started, then report the failure to the caller.
    stop_.store(true, std::memory_order_relaxed);
    state_.fetch_add(2, std::memory_order_seq_cst);
    { std::lock_guard<std::mutex> lk(mu_); }
    cv_.notify_all();
    for (std::thread &t : workers_) t.join();
    ::operator delete(scratch_, std::align_val_t(64));
    throw;
  }
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_relaxed);  // published by the release of the bump below
  state_.fetch_add(2, std::memory_order_seq_cst);  // a new (closed) generation wakes every worker
  { std::lock_guard<std::mutex> lk(mu_); }    // a worker between its check and its wait sees it
  cv_.notify_all();
  for (std::thread &t : workers_) t.join();
  ::operator delete(scratch_, std::align_val_t(64));
}

void *ThreadPool::scratch(int thread) const {
  if (tl_scratch && tl_pool == this) return tl_scratch;
  return scratch_ + size_t(thread) * kScratchBytes;
}

ThreadPool::InlineScope::InlineScope(const ThreadPool &pool, void *scratch)
    : prev_pool_(tl_pool), prev_thread_(tl_thread), prev_scratch_(tl_scratch) {
  tl_pool = &pool;
  tl_thread = 0;
  tl_scratch = scratch;
}

ThreadPool::InlineScope::~InlineScope() {
  tl_pool = prev_pool_;
  tl_thread = prev_thread_;
  tl_scratch = prev_scratch_;
}

bool ThreadPool::nested(int *thread) const {
  if (tl_pool != this) return false;
  *thread = tl_thread;
  return true;
}

int64_t ThreadPool::work(int thread) {
  int64_t ran = 0;
  for (;;) {
    const int64_t part = next_part_.fetch_add(1, std::memory_order_relaxed);
    if (part >= n_parts_) return ran;
    job_(job_ctx_, part, thread);
    ran++;
  }
}

void ThreadPool::run(JobFn job, void *ctx, int64_t n_parts) {
  std::lock_guard<std::mutex> call_lock(call_mu_);
  // Mark this thread as inside a region, so a nested call from job runs inline (never relocks).
  const ThreadPool *prev_pool = tl_pool;
  const int prev_thread = tl_thread;
  tl_pool = this;
  tl_thread = 0;

  if (n_parts == 1 || n_threads_ == 1) {  // nothing to share: no workers involved
    for (int64_t p = 0; p < n_parts; p++) job(ctx, p, 0);
  } else {
    job_ = job;
    job_ctx_ = ctx;
    n_parts_ = n_parts;
    next_part_.store(0, std::memory_order_relaxed);
    parts_done_.store(0, std::memory_order_relaxed);
    const uint64_t open = ((state_.load(std::memory_order_relaxed) >> 1) + 1) << 1 | 1;
    state_.store(open, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lk(mu_); }
      cv_.notify_all();
    }

    const int64_t mine = work(0);
    if (mine != n_parts) {
      parts_done_.fetch_add(mine, std::memory_order_relaxed);
      const auto yield_after = std::min<std::chrono::microseconds>(spin_for_, kYieldAfter);
      // Parts claimed by workers: wait for them to finish (acquire: their writes are visible).
      spin_until([&] { return parts_done_.load(std::memory_order_acquire) == n_parts; }, yield_after);
    }
    // Close, then wait for workers still inside (finishing their bookkeeping, or backing out).
    state_.store(open & ~uint64_t(1), std::memory_order_seq_cst);
    spin_until([&] { return refs_.load(std::memory_order_seq_cst) == 0; }, std::chrono::microseconds(0));
  }

  tl_pool = prev_pool;
  tl_thread = prev_thread;
}

void ThreadPool::worker_main(int id) {
  tl_pool = this;
  tl_thread = id;
#if defined(__x86_64__) || defined(__SSE__)
  // Denormals flushed to zero (FTZ | DAZ): softmax and SiLU tails underflow into them, and x86
  // runs denormal operands ~100x slower. The caller thread sets the same at each forward.
  _mm_setcsr(_mm_getcsr() | 0x8040);
#endif
  uint64_t seen = 0;  // last generation this worker looked at
  for (;;) {
    // Wait for a new generation: spin, spin and yield, then sleep (see kYieldAfter). The clock is
    // read every 64 pauses (~1.5 µs).
    uint64_t s = state_.load(std::memory_order_acquire);
    if ((s >> 1) == seen) {
      const auto t0 = std::chrono::steady_clock::now();
      for (unsigned spins = 1; (s >> 1) == seen; spins++) {
        if ((spins & 63) == 0 || spin_for_.count() == 0) {
          const auto waited = std::chrono::steady_clock::now() - t0;
          if (waited >= spin_for_) {
            std::unique_lock<std::mutex> lk(mu_);
            sleepers_.fetch_add(1, std::memory_order_seq_cst);
            cv_.wait(lk, [&] { return (state_.load(std::memory_order_seq_cst) >> 1) != seen; });
            sleepers_.fetch_sub(1, std::memory_order_relaxed);
          } else if (waited >= kYieldAfter) {
            std::this_thread::yield();
          }
        }
        KF_CPU_RELAX();
        s = state_.load(std::memory_order_acquire);
      }
    }
    seen = s >> 1;
    if (stop_.load(std::memory_order_relaxed)) return;  // ordered by the acquire of state_
    if (!(s & 1)) continue;  // woke up after that region closed: nothing to do

    refs_.fetch_add(1, std::memory_order_seq_cst);
    if (state_.load(std::memory_order_seq_cst) == s) {  // still the region we saw: enter
      const int64_t ran = work(id);
      // release: the caller's acquire of parts_done_ sees everything the parts wrote.
      if (ran) parts_done_.fetch_add(ran, std::memory_order_release);
    }
    refs_.fetch_sub(1, std::memory_order_release);
  }
}

}  // namespace kf
