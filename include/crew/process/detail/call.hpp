// One ProcessPool task on its way: the typed Future state plus the encoded request.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <type_traits>
#include <utility>

#include <msgpack.hpp>

#include <crew/detail/state.hpp>
#include <crew/errors.hpp>
#include <crew/process/detail/type_name.hpp>
#include <crew/process/detail/wire.hpp>
#include <crew/retry.hpp>

namespace crew::inline v0::detail {

class ProcessControl;
/// Forwards a cancelled Future to its pool, if the pool still exists (defined in src/process).
void process_cancel(const std::shared_ptr<ProcessControl>& control, std::uint64_t id) noexcept;
/// Reads the pool's replies on a thread waiting for `state` (see StateBase::drive).
bool process_drive(const std::shared_ptr<ProcessControl>& control, const StateBase& state) noexcept;
/// crew::BadArguments: the result does not decode into the caller's type.
std::exception_ptr bad_result(const std::string& task, const std::string& wanted,
                              const msgpack::object& result) noexcept;

/// Initial size of a message buffer: most task arguments and results are a few bytes, and
/// msgpack's default (8 KiB) would be a large allocation per task.
inline constexpr std::size_t kSmallMessage = 128;

/// The untyped half of a task call, as the pool's supervisor sees it.
/// Thread safety: the request fields are written before submission and then read only by the
/// supervisor; settle through the StateBase protocol (exactly one settler wins).
class CallBase {
 public:
  virtual ~CallBase() = default;
  virtual StateBase& state() noexcept = 0;
  /// Decodes `result` (inside the reply's WireScope) and fulfils the Future; its continuation
  /// goes through `deferral` when one is given.
  virtual void deliver(const msgpack::object& result,
                       ContinuationDeferral* deferral = nullptr) noexcept = 0;
  bool fail(std::exception_ptr e, ContinuationDeferral* deferral = nullptr) noexcept {
    return state().set_exception(std::move(e), deferral);
  }

  std::string task;
  msgpack::sbuffer args{kSmallMessage};  // a msgpack array
  FdList fds;                            // memfds of Buffers in `args`
  int priority = 0;
  std::chrono::nanoseconds timeout{0};
  int attempts = 1;  // executions at most
  int started = 0;   // executions so far
  Backoff backoff{};
  std::uint64_t id = 0;
  std::string (*given_types)() = nullptr;
  std::chrono::steady_clock::time_point submitted{};
};

template <class R>
class Call final : public State<R>, public CallBase {
 public:
  Call() = default;
  StateBase& state() noexcept override { return *this; }

  void deliver(const msgpack::object& result, ContinuationDeferral* deferral) noexcept override {
    if constexpr (std::is_void_v<R>) {
      this->set_value_deferred(deferral);
    } else {
      std::optional<R> value;
      try {
        value.emplace(result.as<R>());
      } catch (...) {
        this->set_exception(bad_result(task, type_name<R>(), result), deferral);
        return;
      }
      this->set_value_deferred(deferral, std::move(*value));
    }
  }

  bool cancel() noexcept override {
    const bool did = StateBase::cancel();
    if (did && control_) process_cancel(control_, id);
    return did;
  }

  bool drive() const noexcept override { return control_ && process_drive(control_, *this); }

  /// Links the call to its pool for cancellation and arms `stop`.
  void arm(std::shared_ptr<ProcessControl> control, std::stop_token stop) {
    control_ = std::move(control);
    if (stop.stop_possible()) stop_.emplace(std::move(stop), Canceller{this});
  }

 private:
  struct Canceller {
    Call* self;
    void operator()() const noexcept { self->cancel(); }
  };
  std::shared_ptr<ProcessControl> control_;
  std::optional<std::stop_callback<Canceller>> stop_;
};

}  // namespace crew::inline v0::detail
