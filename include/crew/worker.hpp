// crew::Worker — Node's worker_threads Worker: a long-lived thread with a message port to its
// parent.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <utility>

#include <crew/future.hpp>
#include <crew/message.hpp>
#include <crew/port.hpp>

namespace crew {
inline namespace v0 {

namespace detail {
struct WorkerState;
}

struct WorkerOptions {
  /// Thread name (`top -H`, gdb); truncated to 15 characters.
  std::string name = "crew-worker";
  /// Handed to the worker as `context.data()` (Node's workerData).
  Message data{};
  /// Stack size in bytes; 0 keeps the system default. At least 64 KiB when set.
  std::size_t stack_size = 0;
  /// High-water mark of each direction of the parent port; 0 is unbounded.
  std::size_t high_water_mark = 0;
};

/// What the worker function receives: its end of the parent port, its data, its stop token.
/// Thread safety: used by the worker thread; parent() may also be handed to other threads.
class WorkerContext {
 public:
  /// The worker's end of the port to its parent (Node's parentPort).
  MessagePort& parent() noexcept { return parent_; }
  /// The options' `data` (Node's workerData).
  Message& data() noexcept { return data_; }
  /// Signalled by Worker::terminate() and by the Worker's destructor.
  [[nodiscard]] std::stop_token stop_token() const noexcept { return stop_; }
  /// A process-unique id, 1 for the first worker (Node's threadId).
  [[nodiscard]] std::uint64_t id() const noexcept { return id_; }

 private:
  friend struct detail::WorkerState;
  WorkerContext(MessagePort parent, Message data, std::stop_token stop, std::uint64_t id)
      : parent_(std::move(parent)), data_(std::move(data)), stop_(std::move(stop)), id_(id) {}
  MessagePort parent_;
  Message data_;
  std::stop_token stop_;
  std::uint64_t id_;
};

/// A thread running `fn(WorkerContext&)`, with a message port between it and its creator.
///
///     crew::Worker w([](crew::WorkerContext& ctx) {
///       while (auto m = ctx.parent().receive())
///       ctx.parent().post(crew::Message(m->as<std::int64_t>() * 2));
///     }, {.name = "doubler"});
///     w.post(crew::Message(21));
///     auto reply = w.receive();   // 42
///     w.terminate().get();         // exit code
///
/// An exception escaping `fn` becomes an error event (on_error) and exit code 1; it never
/// terminates the process. Exit codes: 0 when `fn` returns, 1 when it throws or the worker was
/// terminated. Messages the worker posted before it exited are delivered before its exit event.
///
/// terminate() is cooperative: it signals the worker's stop token and closes the port (which
/// wakes a blocked receive()). A C++ thread cannot be killed: a worker that never checks its
/// token or port keeps running; run such work in a ProcessPool, which can kill it.
///
/// Lifetime: neither copyable nor movable. The destructor terminates the worker and waits for it.
/// Thread safety: every member may be called from any thread.
class Worker {
 public:
  Worker(std::function<void(WorkerContext&)> fn, WorkerOptions options = {});
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  Worker(Worker&&) = delete;
  Worker& operator=(Worker&&) = delete;
  ~Worker();

  /// Sends to the worker; false when its port is closed or full (message untouched).
  bool post(Message&& message) { return port_.post(std::move(message)); }
  /// The next message from the worker; empty once it exited and everything was received.
  std::optional<Message> receive() { return port_.receive(); }
  template <class Rep, class Period>
  std::optional<Message> receive_for(std::chrono::duration<Rep, Period> timeout) {
    return port_.receive_for(timeout);
  }
  std::optional<Message> try_receive() { return port_.try_receive(); }
  /// The parent's end of the port, e.g. to hand to someone else's on_message.
  MessagePort& port() noexcept { return port_; }

  /// Push-style delivery of the worker's messages through `executor` (see MessagePort).
  template <class Executor>
  void on_message(std::function<void(Message)> callback, Executor& executor) {
    set_on_message(std::move(callback),
                   [&executor](std::function<void()> f) { executor.post(std::move(f)); });
  }
  /// The exception that escaped the worker function, delivered through `executor`.
  template <class Executor>
  void on_error(std::function<void(std::exception_ptr)> callback, Executor& executor) {
    set_on_error(std::move(callback),
                 [&executor](std::function<void()> f) { executor.post(std::move(f)); });
  }
  /// The exit code, delivered through `executor` after the worker's messages were posted.
  template <class Executor>
  void on_exit(std::function<void(int)> callback, Executor& executor) {
    set_on_exit(std::move(callback),
                [&executor](std::function<void()> f) { executor.post(std::move(f)); });
  }

  /// Ready once the worker function has started (Node's 'online').
  [[nodiscard]] Future<void> online();
  /// Requests stop and closes the port; the Future gives the exit code once the thread ended.
  Future<int> terminate();
  /// Waits for the worker to end; returns its exit code.
  int join();
  [[nodiscard]] std::uint64_t id() const noexcept;

 private:
  using Schedule = std::function<void(std::function<void()>)>;
  void set_on_error(std::function<void(std::exception_ptr)> callback, Schedule schedule);
  void set_on_exit(std::function<void(int)> callback, Schedule schedule);
  void set_on_message(std::function<void(Message)> callback, Schedule schedule);

  MessagePort port_;
  std::shared_ptr<detail::WorkerState> state_;
};

/// True on the thread that initialised the program (Node's isMainThread).
bool is_main_thread() noexcept;
/// The context of the worker running on this thread; null outside workers.
WorkerContext* this_worker() noexcept;

}  // namespace v0
}  // namespace crew
