// threadpool.cpp — worker loop, region publish and join; see threadpool.h for the design.
#include "threadpool.h"

#include <chrono>
#include <cstdlib>
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

// How long an idle worker spins before sleeping, and how long the caller spins on the join before
// yielding its core. Decode regions follow each other within microseconds; a millisecond covers the
// serial work between them without burning a core for long when the pool goes quiet. A pool with
// more threads than cores does not spin at all: a spinner would hold the core that the thread it
// waits for needs, turning every region into a scheduler time slice.
constexpr auto kSpinFor = std::chrono::microseconds(1000);

// The pool (and thread index) whose region the current thread is running, for nested calls.
thread_local const ThreadPool *tl_pool = nullptr;
thread_local int tl_thread = 0;

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
    stop_ = true;
    gen_.fetch_add(1, std::memory_order_seq_cst);
    { std::lock_guard<std::mutex> lk(mu_); }
    cv_.notify_all();
    for (std::thread &t : workers_) t.join();
    ::operator delete(scratch_, std::align_val_t(64));
    throw;
  }
}

ThreadPool::~ThreadPool() {
  stop_ = true;  // published by the release of the gen_ bump below
  gen_.fetch_add(1, std::memory_order_seq_cst);
  { std::lock_guard<std::mutex> lk(mu_); }  // a worker between its check and its wait sees stop
  cv_.notify_all();
  for (std::thread &t : workers_) t.join();
  ::operator delete(scratch_, std::align_val_t(64));
}

bool ThreadPool::nested(int *thread) const {
  if (tl_pool != this) return false;
  *thread = tl_thread;
  return true;
}

void ThreadPool::run(JobFn job, void *ctx) {
  job_ = job;
  job_ctx_ = ctx;
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  // seq_cst pairs with the worker's sleepers_ increment (a Dekker handshake): either the worker
  // sees the new generation before sleeping, or we see it counted in sleepers_ and wake it.
  gen_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    { std::lock_guard<std::mutex> lk(mu_); }
    cv_.notify_all();
  }

  const ThreadPool *prev_pool = tl_pool;
  const int prev_thread = tl_thread;
  tl_pool = this;
  tl_thread = 0;
  job(ctx, 0);
  tl_pool = prev_pool;
  tl_thread = prev_thread;

  // Join: spin first (workers usually finish within microseconds of us), then yield the core.
  if (pending_.load(std::memory_order_acquire) != 0) {
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned spins = 0; pending_.load(std::memory_order_acquire) != 0; spins++) {
      KF_CPU_RELAX();
      if ((spins & 63) == 63 && std::chrono::steady_clock::now() - t0 >= spin_for_) std::this_thread::yield();
    }
  }
}

void ThreadPool::worker_main(int id) {
  tl_pool = this;
  tl_thread = id;
  uint32_t seen = 0;
  for (;;) {
    // Wait for a new generation: spin for spin_for_, then sleep on the condition variable.
    uint32_t g = gen_.load(std::memory_order_acquire);
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned spins = 1; g == seen; spins++) {
      if ((spins & 63) == 0 || spin_for_.count() == 0) {
        if (std::chrono::steady_clock::now() - t0 >= spin_for_) {
          std::unique_lock<std::mutex> lk(mu_);
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          cv_.wait(lk, [&] { return gen_.load(std::memory_order_seq_cst) != seen; });
          sleepers_.fetch_sub(1, std::memory_order_relaxed);
        }
      }
      KF_CPU_RELAX();
      g = gen_.load(std::memory_order_acquire);
    }
    seen = g;
    if (stop_) return;
    job_(job_ctx_, id);
    pending_.fetch_sub(1, std::memory_order_release);
  }
}

}  // namespace kf
