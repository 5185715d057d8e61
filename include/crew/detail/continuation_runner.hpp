// Where continuations go that must not run on the thread that settles their Future.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include <crew/detail/state.hpp>

namespace crew::inline v0::detail {

class PoolCore;

/// An elastic set of threads, named `<name>-then-wN`, for the continuations of Futures settled by
/// a thread that must stay free: a thread pool's timer thread, a process pool's supervisor. A
/// continuation that blocks or runs long holds one thread and the next one gets another, so no
/// continuation delays a timeout, a spawn or another continuation, and one may wait for further
/// tasks of the same pool. Threads start at the first continuation and end after a second idle.
///
/// Thread safety: defer() may be called from any thread; close() from any thread but its own.
class ContinuationRunner final : public ContinuationDeferral {
 public:
  explicit ContinuationRunner(std::string name);
  ContinuationRunner(const ContinuationRunner&) = delete;
  ContinuationRunner& operator=(const ContinuationRunner&) = delete;
  /// close(), or from one of the runner's own threads (a continuation destroying its pool) hands
  /// the threads to a detached thread that closes them once that continuation returns.
  ~ContinuationRunner();

  void defer(StateBase& state) noexcept override;
  /// Waits until every deferred continuation has run; later ones run on the calling thread.
  /// From one of the runner's own threads it returns at once.
  void close() noexcept;

 private:
  const std::string name_;
  std::mutex mutex_;
  bool closed_ = false;
  std::unique_ptr<PoolCore> core_;  // created by the first defer()
};

}  // namespace crew::inline v0::detail
