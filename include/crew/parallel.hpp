// Data-parallel loops over a crew::ThreadPool: parallel_for and parallel_reduce.
#pragma once

#include <algorithm>
#include <atomic>
#include <concepts>
#include <cstddef>
#include <exception>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include <crew/errors.hpp>
#include <crew/future.hpp>
#include <crew/pool.hpp>

namespace crew {
inline namespace v0 {

namespace detail {
// Range arithmetic in the unsigned type: `last - first` of a full int range does not fit in int.
template <std::integral Index>
std::size_t distance(Index first, Index last) {
  using U = std::make_unsigned_t<Index>;
  return static_cast<std::size_t>(static_cast<U>(static_cast<U>(last) - static_cast<U>(first)));
}
template <std::integral Index>
Index advance(Index first, std::size_t by) {
  using U = std::make_unsigned_t<Index>;
  return static_cast<Index>(static_cast<U>(static_cast<U>(first) + static_cast<U>(by)));
}

// [0, n) cut into chunks of at least `grain`, about eight per thread: enough for the dynamic
// hand-out below to even out uneven chunks, few enough that claiming one costs nothing.
struct Chunking {
  std::size_t n;
  std::size_t size;
  [[nodiscard]] std::size_t count() const { return (n + size - 1) / size; }
  [[nodiscard]] std::size_t begin(std::size_t c) const { return c * size; }
  [[nodiscard]] std::size_t end(std::size_t c) const { return std::min(n, (c + 1) * size); }
};
inline Chunking chunking(std::size_t n, std::size_t threads, std::size_t grain) {
  const std::size_t parts = std::max<std::size_t>(1, threads) * 8;
  return {n, std::max<std::size_t>(std::max<std::size_t>(grain, 1), (n + parts - 1) / parts)};
}

// Runs body(c) for every chunk c. The caller and up to one task per pool thread claim chunks
// from a shared counter until none are left, so a slow chunk never leaves the others idle and the
// caller works instead of waiting for a thread to wake. After the first exception no further
// chunk starts; it is rethrown once every running chunk has returned. Helpers that do not fit in
// a full queue are simply not used; a closed pool throws PoolClosed before any chunk runs.
template <class Body>
void run_chunks(ThreadPool& pool, std::size_t chunks, Body& body) {
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  const auto work = [&] {
    while (!failed.load(std::memory_order_relaxed)) {
      const std::size_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) return;
      if (auto error = capture([&] { body(c); })) {
        failed.store(true, std::memory_order_relaxed);
        std::rethrow_exception(std::move(error));
      }
    }
  };
  std::vector<Future<void>> helpers;
  std::exception_ptr error;
  // The caller counts as one of the pool's threads: as many threads work as the pool has.
  const std::size_t threads = pool.thread_count();
  // At least one helper is tried: a dynamic pool with no thread yet starts one, a closed pool
  // reports itself.
  const std::size_t extra = std::min(chunks - 1, threads > 1 ? threads - 1 : std::size_t{1});
  helpers.reserve(extra);
  for (std::size_t i = 0; i < extra; ++i) {
    try {
      helpers.push_back(pool.run(work));
    } catch (const QueueFull&) {
      break;  // a full queue means fewer helpers, not a failure: the caller takes the chunks
    } catch (const PoolClosed&) {
      if (helpers.empty()) throw;  // nothing started yet: report the closed pool at once
      break;
    } catch (...) {
      error = std::current_exception();
      failed.store(true, std::memory_order_relaxed);
      break;
    }
  }
  if (!error) {
    if (auto e = capture(work)) error = std::move(e);
  }
  // Every helper must finish before we return: they reference this frame.
  for (auto& h : helpers) {
    if (auto e = capture([&] { h.get(); }); e && !error) error = std::move(e);
  }
  if (error) std::rethrow_exception(std::move(error));
}
}  // namespace detail

/// Calls `fn(i)` for every i in [first, last), in parallel on the calling thread and `pool` (as
/// many threads in all as the pool has),
/// and returns when all calls have returned. Indices are handed out in contiguous chunks of at
/// least `grain` (0: automatic). After a call throws, no further chunk starts, and the exception
/// is rethrown once the running chunks have finished. Safe to call from a pool thread (nesting).
///
///     crew::parallel_for(pool, 0, n, [&](int i) { out[i] = f(in[i]); });
template <std::integral Index, class Fn>
void parallel_for(ThreadPool& pool, Index first, Index last, Fn fn, std::size_t grain = 0) {
  if (!(first < last)) return;
  const detail::Chunking ch =
      detail::chunking(detail::distance(first, last), pool.thread_count(), grain);
  auto body = [&](std::size_t c) {
    for (std::size_t i = ch.begin(c), e = ch.end(c); i < e; ++i) fn(detail::advance(first, i));
  };
  detail::run_chunks(pool, ch.count(), body);
}

/// Reduces [first, last) in parallel: each chunk [b, e) gives `range_fn(b, e)`, and the chunk
/// results are folded left to right with `combine`, starting from `identity` — the same order
/// every run, so floating-point results are reproducible for a given pool size and grain.
///
///     auto sum = crew::parallel_reduce(pool, std::size_t{0}, v.size(), std::uint64_t{0},
///         [&](std::size_t b, std::size_t e) { return std::accumulate(&v[b], &v[e],
///         std::uint64_t{0}); }, std::plus<>{});
template <std::integral Index, class T, class RangeFn, class Combine>
T parallel_reduce(ThreadPool& pool, Index first, Index last, T identity, RangeFn range_fn,
                  Combine combine, std::size_t grain = 0) {
  static_assert(std::is_convertible_v<std::invoke_result_t<RangeFn&, Index, Index>, T>,
                "parallel_reduce: range_fn(b, e) must return something convertible to T");
  if (!(first < last)) return identity;
  const detail::Chunking ch =
      detail::chunking(detail::distance(first, last), pool.thread_count(), grain);
  std::vector<std::optional<T>> partial(ch.count());
  auto body = [&](std::size_t c) {
    partial[c].emplace(
        range_fn(detail::advance(first, ch.begin(c)), detail::advance(first, ch.end(c))));
  };
  detail::run_chunks(pool, ch.count(), body);
  T result = std::move(identity);
  for (auto& p : partial) result = combine(std::move(result), std::move(*p));
  return result;
}

}  // namespace v0
}  // namespace crew
