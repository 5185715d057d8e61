// Anchor implementations that crew_compare measures crew against.
//
// MutexPool is the "ordinary" thread pool found in countless code bases: one std::mutex, one
// std::deque<std::function<void()>>, one condition variable for work and one for idleness. It is
// written to be fair, not strawman-slow: notifications happen outside the lock, workers pop under
// the lock and run outside it, and wait_idle() sleeps on a condition variable instead of polling.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <stop_token>
#include <thread>
#include <utility>
#include <vector>

namespace crew_bench {

/// A fixed-size FIFO thread pool guarded by a single mutex.
///
/// Thread safety: post(), submit() and wait_idle() may be called from any thread concurrently.
/// The destructor runs everything still queued, then joins the workers.
class MutexPool {
 public:
  explicit MutexPool(std::size_t threads) {
    workers_.reserve(threads);
    for (std::size_t i = 0; i < threads; ++i) {
      workers_.emplace_back([this](std::stop_token st) { work(st); });
    }
  }

  MutexPool(const MutexPool&) = delete;
  MutexPool& operator=(const MutexPool&) = delete;

  ~MutexPool() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    work_cv_.notify_all();
    workers_.clear();  // jthread joins
  }

  /// Queues `fn` for execution; fire and forget.
  void post(std::function<void()> fn) {
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(fn));
      ++pending_;
    }
    work_cv_.notify_one();
  }

  /// Queues `fn` and returns a std::future for its result. std::function needs a copyable
  /// callable, so the packaged_task lives in a shared_ptr, as in most hand-written pools.
  template <class F>
  auto submit(F&& fn) -> std::future<std::invoke_result_t<F>> {
    using R = std::invoke_result_t<F>;
    auto task = std::make_shared<std::packaged_task<R()>>(std::forward<F>(fn));
    auto fut = task->get_future();
    post([task] { (*task)(); });
    return fut;
  }

  /// Blocks until nothing is queued or running.
  void wait_idle() {
    std::unique_lock lock(mu_);
    idle_cv_.wait(lock, [this] { return pending_ == 0; });
  }

 private:
  void work(std::stop_token) {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mu_);
        work_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping and drained
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
      bool idle = false;
      {
        std::lock_guard lock(mu_);
        idle = --pending_ == 0;
      }
      if (idle) idle_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable idle_cv_;
  std::deque<std::function<void()>> queue_;
  std::size_t pending_ = 0;  // queued + running
  bool stopping_ = false;
  std::vector<std::jthread> workers_;  // last: joined before the members above are destroyed
};

}  // namespace crew_bench
