// crew::Tasks — the registry of named functions a worker process can run — and the worker side
// of a ProcessPool: crew::is_worker_process() and crew::worker_main().
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <stop_token>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <msgpack.hpp>

#include <crew/process/detail/type_name.hpp>
#include <crew/process/detail/wire.hpp>

namespace crew {
inline namespace v0 {
namespace detail {

template <class F>
struct CallableTraits : CallableTraits<decltype(&F::operator())> {};
template <class R, class... A>
struct CallableTraits<R (*)(A...)> {
  using result = R;
  using args = std::tuple<std::decay_t<A>...>;
  static constexpr std::size_t arity = sizeof...(A);
  static std::string params() { return type_list<std::decay_t<A>...>(); }
};
template <class R, class... A>
struct CallableTraits<R (*)(A...) noexcept> : CallableTraits<R (*)(A...)> {};
template <class R, class... A>
struct CallableTraits<R(A...)> : CallableTraits<R (*)(A...)> {};
template <class C, class R, class... A>
struct CallableTraits<R (C::*)(A...)> : CallableTraits<R (*)(A...)> {};
template <class C, class R, class... A>
struct CallableTraits<R (C::*)(A...) const> : CallableTraits<R (*)(A...)> {};
template <class C, class R, class... A>
struct CallableTraits<R (C::*)(A...) noexcept> : CallableTraits<R (*)(A...)> {};
template <class C, class R, class... A>
struct CallableTraits<R (C::*)(A...) const noexcept> : CallableTraits<R (*)(A...)> {};

/// Throws crew::BadArguments: `args` do not fit the task's parameters.
[[noreturn]] void throw_task_arguments(std::string_view task, std::string_view signature,
                                       std::size_t arity, const msgpack::object& args);

using Packer = msgpack::packer<msgpack::sbuffer>;
}  // namespace detail

/// A msgpack value kept in its encoded form: what bridges such as `crew serve`'s JSON API pass
/// to and from tasks without knowing their C++ types.
struct PackedValue {
  std::string bytes;
};

/// A registry of named functions that a worker process can run for a ProcessPool.
///
///     long fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
///
///     int main() {
///       crew::Tasks tasks;
///       tasks.add("fib", fib);
///       if (crew::is_worker_process()) return crew::worker_main(tasks);
///       crew::ProcessPool pool({.tasks = &tasks});
///       long v = pool.run<long>("fib", 30).get();
///     }
///
/// Arguments and results are encoded with msgpack-cxx: built-in types, std::string, containers,
/// std::optional, crew::Buffer (large ones cross as memory files, not copied),
/// crew::SharedBuffer (created with `.across_processes = true`), and user structs that opt in
/// with `MSGPACK_DEFINE(...)`. A function may take its parameters by value or const reference
/// and may return void.
///
/// Thread safety: add() before the registry is shared; afterwards every const member may be
/// called from any thread.
class Tasks {
 public:
  /// Everything the worker needs to run one task (internal).
  struct Entry {
    std::string signature;    ///< "fib(int) -> long"
    std::string result_type;  ///< "long"
    std::size_t arity = 0;
    std::function<void(const msgpack::object& args, detail::Packer& result)> invoke;
  };

  /// Registers `fn` under `name`. Throws std::invalid_argument for an empty name or one that is
  /// already registered.
  template <class F>
  Tasks& add(std::string name, F fn) {
    using Traits = detail::CallableTraits<std::decay_t<F>>;
    using R = typename Traits::result;
    Entry e;
    e.result_type = detail::type_name<std::decay_t<R>>();
    e.signature = name + "(" + Traits::params() + ") -> " + e.result_type;
    e.arity = Traits::arity;
    e.invoke = [fn = std::move(fn), name, sig = e.signature](const msgpack::object& args,
                                                             detail::Packer& out) mutable {
      if (args.type != msgpack::type::ARRAY || args.via.array.size != Traits::arity) {
        detail::throw_task_arguments(name, sig, Traits::arity, args);
      }
      typename Traits::args values;
      try {
        args.convert(values);
      } catch (const msgpack::type_error&) {
        detail::throw_task_arguments(name, sig, Traits::arity, args);
      }
      if constexpr (std::is_void_v<R>) {
        std::apply(fn, std::move(values));
        out.pack_nil();
      } else {
        out.pack(std::apply(fn, std::move(values)));
      }
    };
    insert(std::move(name), std::move(e));
    return *this;
  }

  /// The registered names, sorted.
  [[nodiscard]] std::vector<std::string> names() const;
  [[nodiscard]] bool contains(std::string_view name) const noexcept;
  /// The task's signature, e.g. "fib(int) -> long"; throws crew::BadArguments for an unknown name.
  [[nodiscard]] const std::string& signature(std::string_view name) const;
  /// The entry for `name`, or nullptr (internal).
  [[nodiscard]] const Entry* find(std::string_view name) const noexcept;
  [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }
  /// Runs task `name` in this process on `args`, a packed msgpack array, and returns its packed
  /// result. Throws crew::BadArguments (unknown name, arguments that do not fit) and whatever
  /// the task throws.
  [[nodiscard]] PackedValue invoke_packed(std::string_view name, std::string_view args) const;

 private:
  void insert(std::string name, Entry entry);
  std::map<std::string, Entry, std::less<>> entries_;
};

/// True in a process started by a ProcessPool as one of its workers (its environment carries the
/// pool's channel). Call it at the top of `main`, before doing anything a worker should not do.
[[nodiscard]] bool is_worker_process() noexcept;

/// Runs the worker side of a ProcessPool: answers task requests from the parent until the parent
/// closes the channel or exits (the worker never outlives it). Returns the process exit code
/// (0 on a normal shutdown); `main` returns it. Throws std::logic_error when this process was not
/// started by a ProcessPool.
int worker_main(const Tasks& tasks);

/// What a named task may ask about its own run.
namespace this_task {
/// The stop token of the task running on this thread, when its runner gives one: `crew serve
/// --isolation thread` passes its ThreadPool's (the task's timeout, shutdown). A long task checks
/// it now and then and returns early. In a worker process, where a task is stopped by killing its
/// process, and on any other thread, it never fires.
[[nodiscard]] std::stop_token stop_token() noexcept;
[[nodiscard]] inline bool stop_requested() noexcept {
  return stop_token().stop_requested();
}

/// Makes `token` the current task's stop token on this thread while it lives (for runners that
/// invoke Tasks on threads of their own).
class StopScope {
 public:
  explicit StopScope(std::stop_token token) noexcept;
  ~StopScope();
  StopScope(const StopScope&) = delete;
  StopScope& operator=(const StopScope&) = delete;

 private:
  std::stop_token previous_;
};
}  // namespace this_task

}  // namespace v0
}  // namespace crew

namespace msgpack {
MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS) {
  namespace adaptor {
  template <>
  struct convert<crew::PackedValue> {
    const msgpack::object& operator()(const msgpack::object& o, crew::PackedValue& v) const {
      msgpack::sbuffer out(128);
      msgpack::pack(out, o);
      v.bytes.assign(out.data(), out.size());
      return o;
    }
  };
  }  // namespace adaptor
}  // MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS)
}  // namespace msgpack
