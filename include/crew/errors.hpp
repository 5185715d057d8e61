// crew — typed errors shared by every part of the toolbox.
#pragma once

#include <stdexcept>
#include <string>

namespace crew {
inline namespace v0 {

/// Base of every error crew raises for a task, a pool or a library call that failed. Catch
/// `crew::Error` to handle them all.
///
/// Thread safety: immutable after construction; safe to copy and read from any thread.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The task was cancelled before it finished: its Future was cancelled, its `RunOptions::stop`
/// token fired, or its stop was requested. A task cancelled while still queued never runs.
class Cancelled : public Error {
 public:
  Cancelled();
  explicit Cancelled(const std::string& what) : Error(what) {}
};

/// The task ran past its `RunOptions::timeout` (counted from when it started). The Future settles
/// at the deadline; a thread task keeps running until it returns, so make long tasks watch their
/// `std::stop_token` (it is signalled), or run them in a process pool, which kills them.
class TimedOut : public Error {
 public:
  explicit TimedOut(const std::string& what) : Error(what) {}
};

/// The pool's bounded queue was full and its policy is `OnFull::reject`. The task was not accepted.
class QueueFull : public Error {
 public:
  explicit QueueFull(const std::string& what) : Error(what) {}
};

/// The pool is closed: it accepts no new tasks, or it was terminated before a queued task started.
class PoolClosed : public Error {
 public:
  explicit PoolClosed(const std::string& what) : Error(what) {}
};

/// A value did not have the shape an operation needs: a Message accessed as the wrong kind, a
/// detached Buffer posted, arguments that do not decode into a task's parameters. The message
/// names what was expected and what was given.
class BadArguments : public Error {
 public:
  explicit BadArguments(const std::string& what) : Error(what) {}
};

/// A cryptographic library call failed (OpenSSL could not compute a digest, draw random bytes or
/// run a cipher): not the data's fault (corrupt or forged input is stream::DataError) but the
/// library's or its configuration's. The message names the call and OpenSSL's own reason.
class CryptoError : public Error {
 public:
  explicit CryptoError(const std::string& what) : Error(what) {}
};

/// A plugin (a shared library given to `crew serve --plugin` or `crew worker --plugin`) could not
/// be used: it does not exist or does not load, it lacks `crew_register_tasks`, or its
/// registration threw (a task name already taken, say). The message names the path and why.
class PluginError : public Error {
 public:
  explicit PluginError(const std::string& what) : Error(what) {}
};

}  // namespace v0
}  // namespace crew
