// Errors of the process layer: what happened to a task that ran in a worker process.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include <crew/errors.hpp>

namespace crew {
inline namespace v0 {

/// The worker process running the task died: killed by a signal (a segfault, `abort()`, an
/// external `kill -9`) or exited on its own (`exit(3)`), or it broke the wire protocol. The
/// message names the task, the pid, the signal or exit code and the last lines of the worker's
/// stderr. Other tasks are unaffected; queued tasks run on the replacement worker.
///
/// Thread safety: immutable after construction; safe to copy and read from any thread.
class WorkerCrashed : public Error {
 public:
  WorkerCrashed(const std::string& what, std::string task, int pid, int signal, int exit_code,
                std::vector<std::string> stderr_tail)
      : Error(what),
        task_(std::move(task)),
        stderr_tail_(std::move(stderr_tail)),
        pid_(pid),
        signal_(signal),
        exit_code_(exit_code) {}
  /// The task that was running ("" when the worker died before serving: a start-up failure).
  [[nodiscard]] const std::string& task() const noexcept { return task_; }
  [[nodiscard]] int pid() const noexcept { return pid_; }
  /// The signal that killed the worker, or 0.
  [[nodiscard]] int signal() const noexcept { return signal_; }
  /// The worker's exit code when it exited on its own, or -1.
  [[nodiscard]] int exit_code() const noexcept { return exit_code_; }
  /// Up to the last 20 lines the worker wrote to stderr.
  [[nodiscard]] const std::vector<std::string>& stderr_tail() const noexcept {
    return stderr_tail_;
  }

 private:
  std::string task_;
  std::vector<std::string> stderr_tail_;
  int pid_;
  int signal_;
  int exit_code_;
};

/// The task went past `ProcessPoolOptions::memory_limit_bytes`: its worker ran out of address
/// space or was killed when its resident memory crossed the cap. The worker is replaced.
///
/// Thread safety: immutable after construction; safe to copy and read from any thread.
class MemoryLimitExceeded : public Error {
 public:
  MemoryLimitExceeded(const std::string& what, std::size_t limit_bytes)
      : Error(what), limit_bytes_(limit_bytes) {}
  [[nodiscard]] std::size_t limit_bytes() const noexcept { return limit_bytes_; }

 private:
  std::size_t limit_bytes_;
};

/// The task threw in the worker process. Carries the exception's type name and `what()` as the
/// worker saw them (the exception object itself cannot cross a process boundary).
///
/// Thread safety: immutable after construction; safe to copy and read from any thread.
class RemoteError : public Error {
 public:
  RemoteError(const std::string& what, std::string type_name, std::string remote_what)
      : Error(what), type_name_(std::move(type_name)), remote_what_(std::move(remote_what)) {}
  /// The demangled type of the exception the task threw, e.g. "std::runtime_error".
  [[nodiscard]] const std::string& type_name() const noexcept { return type_name_; }
  /// Its `what()`.
  [[nodiscard]] const std::string& remote_what() const noexcept { return remote_what_; }

 private:
  std::string type_name_;
  std::string remote_what_;
};

}  // namespace v0
}  // namespace crew
