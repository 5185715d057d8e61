// A minimal move-only `void()` callable wrapper (g++ 12 has no std::move_only_function).
#pragma once

#include <concepts>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

namespace crew::inline v0::detail {

class UniqueFunction;

/// What UniqueFunction can hold: a movable callable invoked as `fn()` (not a UniqueFunction).
template <class F>
concept StorableCallable =
    !std::same_as<std::remove_cvref_t<F>, UniqueFunction> &&
    std::constructible_from<std::decay_t<F>, F> && std::invocable<std::decay_t<F>&>;

/// Owns one callable invoked as `fn()`; the callable only needs to be movable (it may hold a
/// std::unique_ptr, a Promise, ...). Empty when default-constructed or moved from.
///
/// Thread safety: none; one object is used by one thread at a time.
class UniqueFunction {
 public:
  UniqueFunction() noexcept = default;

  template <StorableCallable F>
  explicit UniqueFunction(F&& fn)
      : impl_(std::make_unique<Impl<std::decay_t<F>>>(std::forward<F>(fn))) {}

  UniqueFunction(UniqueFunction&&) noexcept = default;
  UniqueFunction& operator=(UniqueFunction&&) noexcept = default;

  explicit operator bool() const noexcept { return static_cast<bool>(impl_); }
  /// Calls the callable; must not be empty.
  void operator()() { impl_->call(); }

 private:
  struct Base {
    Base() = default;
    Base(const Base&) = delete;
    Base& operator=(const Base&) = delete;
    virtual ~Base() = default;
    virtual void call() = 0;
  };
  template <class Fn>
  struct Impl final : Base {
    template <class G>
    explicit Impl(G&& g) : fn(std::forward<G>(g)) {}
    void call() override { std::invoke(fn); }
    Fn fn;
  };

  std::unique_ptr<Base> impl_;
};

}  // namespace crew::inline v0::detail
