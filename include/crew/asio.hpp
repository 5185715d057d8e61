// crew/asio.hpp — crew's pools as Asio asynchronous operations, with universal completion tokens.
//
//     auto v = co_await crew::async_run(pool, fib, 30, asio::use_awaitable);
//     crew::async_run<int>(procs, "fib", 30, asio::bind_executor(ioc, [](auto error, int v) {}));
//     std::future<int> f = crew::async_wait(pool.run(fib, 30), asio::use_future);
//
// The completion signature is void(std::exception_ptr, R) (void(std::exception_ptr) for void), as
// co_spawn's: the task's exception, or nullptr and its value. The handler runs on its associated
// executor (a coroutine's own, or what bind_executor names; Asio's default, the system executor,
// for a bare callback), never on a pool thread, and that executor counts the operation as
// outstanding work, so io_context::run() does not return while one is in flight.
//
// Boost.Asio by default; define CREW_ASIO_STANDALONE before including this header for standalone
// Asio (Debian: libasio-dev). Per-operation cancellation needs Asio 1.19 (Boost 1.77) or later,
// which standalone Asio 1.22 is and Debian's Boost 1.74 is not: a cancellation slot bound to the
// token (bind_cancellation_slot, a coroutine's, parallel_group's) then stops the task (its stop
// token for a ThreadPool task; a ProcessPool kills the worker running it) and the caller gets
// operation_aborted. Tokens such as deferred and as_tuple come with the Asio that has them.
#pragma once

#include <atomic>
#include <cstddef>
#include <exception>
#include <memory>
#include <optional>
#include <stop_token>
#include <string_view>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>  // before Boost.Asio 1.74, whose awaitable.hpp forgets it

#include <crew/errors.hpp>
#include <crew/future.hpp>
#include <crew/pool.hpp>
#include <crew/process/pool.hpp>

#if defined(CREW_ASIO_STANDALONE)
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/error.hpp>
#include <asio/execution.hpp>
#include <asio/post.hpp>
#include <asio/version.hpp>
#if ASIO_VERSION >= 101900
#include <asio/associated_cancellation_slot.hpp>
#define CREW_ASIO_CANCELLATION 1
#endif
#else
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/version.hpp>
#include <boost/system/system_error.hpp>
#if BOOST_ASIO_VERSION >= 101900
#include <boost/asio/associated_cancellation_slot.hpp>
#define CREW_ASIO_CANCELLATION 1
#endif
#endif

namespace crew::inline v0 {

// One inline namespace per Asio flavour: a program may use both, in different files, without two
// different definitions of one function.
#if defined(CREW_ASIO_STANDALONE)
inline namespace asio_standalone {
namespace net = ::asio;
using SystemError = std::system_error;
#else
inline namespace asio_boost {
namespace net = ::boost::asio;
using SystemError = ::boost::system::system_error;
#endif

namespace asio_detail {

template <class R>
struct SignatureOf {
  using type = void(std::exception_ptr, R);
};
template <>
struct SignatureOf<void> {
  using type = void(std::exception_ptr);
};
template <class R>
using Signature = typename SignatureOf<R>::type;

template <class F>
struct FutureValue;
template <class R>
struct FutureValue<Future<R>> {
  using type = R;
};

// Calls `handler` with what `settled` holds; a Cancelled that this operation's own cancellation
// caused becomes operation_aborted, as any Asio operation reports it.
template <class R, class Handler>
void complete(Handler& handler, Future<R> settled, bool aborted) {
  std::exception_ptr error;
  std::optional<std::conditional_t<std::is_void_v<R>, int, R>> value;
  try {
    if constexpr (std::is_void_v<R>) {
      settled.get();
    } else {
      value.emplace(settled.get());
    }
  } catch (const Cancelled&) {
    error = aborted ? std::make_exception_ptr(SystemError(net::error::operation_aborted))
                    : std::current_exception();
  } catch (...) {
    error = std::current_exception();
  }
  if constexpr (std::is_void_v<R>) {
    std::move(handler)(error);
  } else if (value) {
    std::move(handler)(error, std::move(*value));
  } else {
    static_assert(std::is_default_constructible_v<R>,
                  "crew::async_run/async_wait: the result type must be default-constructible "
                  "(the completion gives one with an error), as co_spawn's");
    std::move(handler)(error, R{});
  }
}

// What an operation keeps until its handler runs. The handler runs once: the task's end and a
// cancellation (async_wait only) race for `claimed`; the winner posts it to its executor.
template <class R, class Handler>
struct Operation {
  using Executor = net::associated_executor_t<Handler>;
  using Work = std::decay_t<decltype(net::prefer(std::declval<Executor>(),
                                                 net::execution::outstanding_work.tracked))>;

  explicit Operation(Handler h)
      : handler(std::move(h)),
        work(net::prefer(net::get_associated_executor(handler),
                         net::execution::outstanding_work.tracked)) {}

  // Posts the completion with `settled` unless another already claimed it. The work count moves
  // to the posted completion: an operation whose task never ends (a cancelled wait) does not
  // keep the caller's io_context running.
  static void finish(const std::shared_ptr<Operation>& self, Future<R> settled) {
    if (self->claimed.exchange(true)) return;
    const Work work = std::move(*self->work);
    self->work.reset();
    net::post(work, [self, settled = std::move(settled)]() mutable {
#ifdef CREW_ASIO_CANCELLATION
      net::get_associated_cancellation_slot(self->handler).clear();
#endif
      complete<R>(self->handler, std::move(settled), self->stop.stop_requested());
    });
  }

  Handler handler;
  std::optional<Work> work;
  std::stop_source stop;
  std::atomic<bool> claimed{false};
};

// Starts `start(RunOptions)` -> Future<R> for `handler`: the handler's cancellation slot (when
// Asio has them) requests the task's stop, which cancels it in either pool.
template <class R, class Handler, class Start>
void launch(Handler handler, Start start) {
  auto op = std::make_shared<Operation<R, Handler>>(std::move(handler));
#ifdef CREW_ASIO_CANCELLATION
  auto slot = net::get_associated_cancellation_slot(op->handler);
  if (slot.is_connected()) {
    slot.assign([stop = op->stop](net::cancellation_type type) mutable {
      if (type != net::cancellation_type::none) stop.request_stop();
    });
  }
#endif
  Future<R> future;
  try {
    future = start(RunOptions{.stop = op->stop.get_token()});
  } catch (...) {
    // Refused at once (PoolClosed, QueueFull, bad arguments): still a completion, not a throw.
    Promise<R> failed;
    future = failed.get_future();
    failed.set_exception(std::current_exception());
  }
  (void)std::move(future).then(
      [op](Future<R> settled) mutable { Operation<R, Handler>::finish(op, std::move(settled)); });
}

template <class R, class Handler>
void launch_wait(Handler handler, Future<R> future) {
  auto op = std::make_shared<Operation<R, Handler>>(std::move(handler));
#ifdef CREW_ASIO_CANCELLATION
  // Cancelling a wait stops waiting: the task itself goes on (it is not this operation's).
  auto slot = net::get_associated_cancellation_slot(op->handler);
  if (slot.is_connected()) {
    slot.assign([weak = std::weak_ptr(op)](net::cancellation_type type) {
      if (type == net::cancellation_type::none) return;
      if (auto self = weak.lock()) {
        self->stop.request_stop();
        Promise<R> aborted;
        auto settled = aborted.get_future();
        aborted.set_exception(std::make_exception_ptr(Cancelled("the wait was cancelled")));
        Operation<R, Handler>::finish(self, std::move(settled));
      }
    });
  }
#endif
  (void)std::move(future).then(
      [op](Future<R> settled) mutable { Operation<R, Handler>::finish(op, std::move(settled)); });
}

template <class Tuple, std::size_t... I>
auto thread_run(ThreadPool& pool, Tuple&& all, std::index_sequence<I...>) {
  constexpr std::size_t n = std::tuple_size_v<std::remove_reference_t<Tuple>>;
  using Token = std::decay_t<std::tuple_element_t<n - 1, std::remove_reference_t<Tuple>>>;
  using Fn = std::decay_t<std::tuple_element_t<0, std::remove_reference_t<Tuple>>>;
  using R = typename FutureValue<decltype(std::declval<ThreadPool&>().run(
      std::declval<Fn>(),
      std::declval<
          std::decay_t<std::tuple_element_t<I + 1, std::remove_reference_t<Tuple>>>>()...))>::type;
  Token token(std::get<n - 1>(std::move(all)));
  return net::async_initiate<Token, Signature<R>>(
      [&pool](auto handler, Fn fn, auto... args) {
        launch<R>(std::move(handler), [&](RunOptions options) {
          return pool.run(std::move(options), std::move(fn), std::move(args)...);
        });
      },
      token, std::get<0>(std::move(all)), std::get<I + 1>(std::move(all))...);
}

template <class R, class Tuple, std::size_t... I>
auto process_run(ProcessPool& pool, std::string_view name, Tuple&& all, std::index_sequence<I...>) {
  constexpr std::size_t n = std::tuple_size_v<std::remove_reference_t<Tuple>>;
  using Token = std::decay_t<std::tuple_element_t<n - 1, std::remove_reference_t<Tuple>>>;
  Token token(std::get<n - 1>(std::move(all)));
  return net::async_initiate<Token, Signature<R>>(
      [&pool](auto handler, std::string task, auto... args) {
        launch<R>(std::move(handler), [&](RunOptions options) {
          return pool.run<R>(std::move(options), task, std::move(args)...);
        });
      },
      token, std::string(name), std::get<I>(std::move(all))...);
}

}  // namespace asio_detail

/// Runs `fn(args...)` (or `fn(stop_token, args...)`) on `pool`; the last argument is the
/// completion token. Signature void(std::exception_ptr, R).
template <class... FnArgsToken>
auto async_run(ThreadPool& pool, FnArgsToken&&... fn_args_token) {
  static_assert(sizeof...(FnArgsToken) >= 2,
                "crew::async_run(pool, fn, args..., token): a function and a token");
  return asio_detail::thread_run(pool,
                                 std::forward_as_tuple(std::forward<FnArgsToken>(fn_args_token)...),
                                 std::make_index_sequence<sizeof...(FnArgsToken) - 2>{});
}

/// Runs the named task in one of `pool`'s worker processes; the last argument is the completion
/// token. Signature void(std::exception_ptr, R). Cancellation kills the worker running it.
template <class R, class... ArgsToken>
auto async_run(ProcessPool& pool, std::string_view name, ArgsToken&&... args_token) {
  static_assert(sizeof...(ArgsToken) >= 1,
                "crew::async_run<R>(procs, name, args..., token): a token last");
  return asio_detail::process_run<R>(pool, name,
                                     std::forward_as_tuple(std::forward<ArgsToken>(args_token)...),
                                     std::make_index_sequence<sizeof...(ArgsToken) - 1>{});
}

/// Completes when `future` settles. Cancelling the wait completes it with operation_aborted at
/// once; the task goes on (cancel it through its own stop token or Future::cancel()).
template <class R, class Token>
auto async_wait(Future<R> future, Token&& token) {
  return net::async_initiate<Token, asio_detail::Signature<R>>(
      [](auto handler, Future<R> f) {
        asio_detail::launch_wait<R>(std::move(handler), std::move(f));
      },
      token, std::move(future));
}

}  // namespace asio_standalone or asio_boost
}  // namespace crew::inline v0
