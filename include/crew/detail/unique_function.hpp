// A minimal move-only callable wrapper (g++ 12 has no std::move_only_function): `R()` for any R.
#pragma once

#include <concepts>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

namespace crew::inline v0::detail {

template <class R>
class BasicUniqueFunction;

/// What BasicUniqueFunction<R> can hold: a movable callable invoked as `fn()` whose result
/// converts to R (and not a BasicUniqueFunction<R> itself).
template <class F, class R>
concept StorableCallable =
    !std::same_as<std::remove_cvref_t<F>, BasicUniqueFunction<R>> &&
    std::constructible_from<std::decay_t<F>, F> && std::is_invocable_r_v<R, std::decay_t<F>&>;

/// Owns one callable invoked as `fn()`; the callable only needs to be movable (it may hold a
/// std::unique_ptr, a Promise, a Buffer, ...). Empty when default-constructed or moved from.
///
/// Thread safety: none; one object is used by one thread at a time.
template <class R>
class BasicUniqueFunction {
 public:
  BasicUniqueFunction() noexcept = default;

  template <class F>
  requires StorableCallable<F, R> BasicUniqueFunction(
      F&& fn)  // NOLINT(google-explicit-constructor): converts like std::function
      : impl_(std::make_unique<Impl<std::decay_t<F>>>(std::forward<F>(fn))) {}

  BasicUniqueFunction(BasicUniqueFunction&&) noexcept = default;
  BasicUniqueFunction& operator=(BasicUniqueFunction&&) noexcept = default;

  explicit operator bool() const noexcept { return static_cast<bool>(impl_); }
  /// Calls the callable; must not be empty.
  R operator()() { return impl_->call(); }

 private:
  struct Base {
    Base() = default;
    Base(const Base&) = delete;
    Base& operator=(const Base&) = delete;
    virtual ~Base() = default;
    virtual R call() = 0;
  };
  template <class Fn>
  struct Impl final : Base {
    template <class G>
    explicit Impl(G&& g) : fn(std::forward<G>(g)) {}
    R call() override {
      if constexpr (std::is_void_v<R>) {
        std::invoke(fn);
      } else {
        return std::invoke(fn);
      }
    }
    Fn fn;
  };

  std::unique_ptr<Base> impl_;
};

using UniqueFunction = BasicUniqueFunction<void>;

}  // namespace crew::inline v0::detail
