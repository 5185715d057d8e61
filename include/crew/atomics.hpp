// crew::atomics — Node's Atomics over a crew::SharedBuffer: read-modify-write operations on 32-
// and 64-bit elements, and wait/notify that also works between processes.
#pragma once

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>

#include <crew/shared_buffer.hpp>

namespace crew {
inline namespace v0 {
namespace atomics {

/// What wait() saw: woken by notify(), the value was not `expected`, or the timeout passed.
enum class WaitResult { ok, not_equal, timed_out };

/// The element types atomics operate on. `index` arguments count elements of this type.
template <class T>
concept Element = std::same_as<T, std::int32_t> || std::same_as<T, std::uint32_t> ||
    std::same_as<T, std::int64_t> || std::same_as<T, std::uint64_t>;

/// The element types wait() and notify() take: a Linux futex is a 32-bit word.
template <class T>
concept WaitableElement = std::same_as<T, std::int32_t> || std::same_as<T, std::uint32_t>;

namespace detail {
[[noreturn]] void throw_index(const char* op, std::size_t index, std::size_t bytes,
                              std::size_t element);
WaitResult wait_word(const void* word, std::uint32_t expected, std::chrono::nanoseconds timeout,
                     bool shared);
std::size_t notify_word(const void* word, std::size_t count, bool shared);

// The element, bounds-checked. SharedBuffer memory is at least 64-byte aligned, so every element
// is naturally aligned.
template <Element T>
std::atomic_ref<T> cell(const SharedBuffer& buffer, std::size_t index, const char* op) {
  if (index >= buffer.size() / sizeof(T)) throw_index(op, index, buffer.size(), sizeof(T));
  return std::atomic_ref<T>(*reinterpret_cast<T*>(buffer.data() + index * sizeof(T)));
}
}  // namespace detail

// All operations are sequentially consistent, as in JavaScript. Each throws std::out_of_range
// naming the index and the buffer size when `index` is past the last whole element.
// Thread safety: any thread or process sharing the buffer may call any of them concurrently.

/// The value at `index` (name the type: `load<std::int32_t>(buf, 0)`).
template <Element T>
T load(const SharedBuffer& buffer, std::size_t index) {
  return detail::cell<T>(buffer, index, "load").load();
}
/// Stores `value` (its type picks the element type) and returns it.
template <Element T>
T store(const SharedBuffer& buffer, std::size_t index, T value) {
  detail::cell<T>(buffer, index, "store").store(value);
  return value;
}
/// Adds and returns the previous value (wrapping, like JavaScript's typed arrays).
template <Element T>
T add(const SharedBuffer& buffer, std::size_t index, T value) {
  return detail::cell<T>(buffer, index, "add").fetch_add(value);
}
template <Element T>
T sub(const SharedBuffer& buffer, std::size_t index, T value) {
  return detail::cell<T>(buffer, index, "sub").fetch_sub(value);
}
template <Element T>
T and_(const SharedBuffer& buffer, std::size_t index, T value) {
  return detail::cell<T>(buffer, index, "and_").fetch_and(value);
}
template <Element T>
T or_(const SharedBuffer& buffer, std::size_t index, T value) {
  return detail::cell<T>(buffer, index, "or_").fetch_or(value);
}
template <Element T>
T xor_(const SharedBuffer& buffer, std::size_t index, T value) {
  return detail::cell<T>(buffer, index, "xor_").fetch_xor(value);
}
/// Stores `value` and returns the previous value.
template <Element T>
T exchange(const SharedBuffer& buffer, std::size_t index, T value) {
  return detail::cell<T>(buffer, index, "exchange").exchange(value);
}
/// Stores `desired` if the value is `expected`; returns the previous value either way (like
/// Atomics.compareExchange: it succeeded when the result equals `expected`).
template <Element T>
T compare_exchange(const SharedBuffer& buffer, std::size_t index, T expected, T desired) {
  detail::cell<T>(buffer, index, "compare_exchange").compare_exchange_strong(expected, desired);
  return expected;
}

/// Sleeps while the value at `index` is `expected`, until notify() wakes it or `timeout` passes
/// (Atomics.wait). Returns not_equal at once when the value differs. A negative timeout counts as
/// zero. Works between processes when the buffer was created with `.across_processes = true`.
template <WaitableElement T, class Rep, class Period>
WaitResult wait(const SharedBuffer& buffer, std::size_t index, T expected,
                std::chrono::duration<Rep, Period> timeout) {
  (void)detail::cell<T>(buffer, index, "wait");  // bounds check
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(timeout);
  return detail::wait_word(buffer.data() + index * sizeof(T), static_cast<std::uint32_t>(expected),
                           ns.count() < 0 ? std::chrono::nanoseconds::zero() : ns,
                           buffer.across_processes());
}
/// As above, without a timeout.
template <WaitableElement T>
WaitResult wait(const SharedBuffer& buffer, std::size_t index, T expected) {
  (void)detail::cell<T>(buffer, index, "wait");
  return detail::wait_word(buffer.data() + index * sizeof(T), static_cast<std::uint32_t>(expected),
                           std::chrono::nanoseconds(-1), buffer.across_processes());
}

/// Wakes up to `count` waiters on the element at `index` (default: all) and returns how many it
/// woke (Atomics.notify). The element is 32-bit unless named: `notify<std::uint32_t>(buf, i)`.
template <WaitableElement T = std::int32_t>
std::size_t notify(const SharedBuffer& buffer, std::size_t index,
                   std::size_t count = std::numeric_limits<std::size_t>::max()) {
  (void)detail::cell<T>(buffer, index, "notify");
  return detail::notify_word(buffer.data() + index * sizeof(T), count, buffer.across_processes());
}

}  // namespace atomics
}  // namespace v0
}  // namespace crew
