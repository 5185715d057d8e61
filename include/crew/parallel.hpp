// Data-parallel loops over a crew::ThreadPool: parallel_for and parallel_reduce.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <exception>
#include <type_traits>
#include <utility>
#include <vector>

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

// Chunks of at least `grain` indices, about four per thread so that a slow chunk can be balanced
// by the others.
inline std::size_t chunk_size(std::size_t n, std::size_t threads, std::size_t grain) {
  const std::size_t parts = std::max<std::size_t>(1, threads) * 4;
  return std::max<std::size_t>(std::max<std::size_t>(grain, 1), (n + parts - 1) / parts);
}

// Waits for every part (they may reference the caller's stack), then rethrows the first failure.
template <class T, class Each>
void join_all(std::vector<Future<T>>& parts, std::exception_ptr error, Each&& each) {
  for (auto& p : parts) {
    try {
      if (error) {
        p.wait();
      } else {
        each(p);
      }
    } catch (...) {
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// Submits one task per chunk of [0, n); `make(b, e)` builds the task for a chunk.
template <class T, class Make>
void run_chunks(ThreadPool& pool, std::size_t n, std::size_t grain, Make&& make,
                std::vector<Future<T>>& parts, std::exception_ptr& error) {
  const std::size_t chunk = chunk_size(n, pool.thread_count(), grain);
  parts.reserve((n + chunk - 1) / chunk);
  try {
    for (std::size_t b = 0; b < n; b += chunk)
      parts.push_back(pool.run(make(b, std::min(n, b + chunk))));
  } catch (...) {
    error = std::current_exception();  // e.g. QueueFull: the parts already queued still finish
  }
}
}  // namespace detail

/// Calls `fn(i)` for every i in [first, last), in parallel on `pool`, and returns when all calls
/// have returned. Indices are split into contiguous chunks of at least `grain` (0: automatic).
/// If calls throw, the first exception is rethrown after every chunk has finished.
/// Called from a pool thread, the wait runs other work (nesting is safe).
///
///     crew::parallel_for(pool, 0, n, [&](int i) { out[i] = f(in[i]); });
template <std::integral Index, class Fn>
void parallel_for(ThreadPool& pool, Index first, Index last, Fn fn, std::size_t grain = 0) {
  if (!(first < last)) return;
  const std::size_t n = detail::distance(first, last);
  std::vector<Future<void>> parts;
  std::exception_ptr error;
  detail::run_chunks(
      pool, n, grain,
      [&fn, first](std::size_t b, std::size_t e) {
        return [&fn, first, b, e] {
          for (std::size_t i = b; i < e; ++i) fn(detail::advance(first, i));
        };
      },
      parts, error);
  detail::join_all(parts, error, [](Future<void>& p) { p.get(); });
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
  const std::size_t n = detail::distance(first, last);
  std::vector<Future<T>> parts;
  std::exception_ptr error;
  detail::run_chunks(
      pool, n, grain,
      [&range_fn, first](std::size_t b, std::size_t e) {
        return [&range_fn, first, b, e]() -> T {
          return range_fn(detail::advance(first, b), detail::advance(first, e));
        };
      },
      parts, error);
  T result = std::move(identity);
  detail::join_all(parts, error,
                   [&](Future<T>& p) { result = combine(std::move(result), p.get()); });
  return result;
}

}  // namespace v0
}  // namespace crew
