#include "tasks.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

#include <dlfcn.h>
#include <fmt/format.h>
#include <openssl/evp.h>

#include <crew/errors.hpp>

#include "common/crypto_error.hpp"

namespace crew::serve_app {
namespace {

long fib(int n) {
  if (n < 0 || n > 92) throw BadArguments(fmt::format("fib: n = {} is outside 0..92", n));
  long a = 0, b = 1;
  for (int i = 0; i < n; ++i) b = std::exchange(a, b) + b;
  return a;
}

// How many steps a loop takes between two looks at its stop token: a look costs a few
// nanoseconds, so checking every 2^16 additions is free and answers a stop within a millisecond.
constexpr long kStopCheckEvery = 1 << 16;

[[noreturn]] void stopped(const char* task) {
  throw Cancelled(
      fmt::format("{}: stopped (its timeout passed or the server is shutting down)", task));
}

// The seed's heavy loop: the sum of every i below n, one addition at a time on purpose. The
// empty asm keeps the compiler from replacing the loop by n(n-1)/2 or vectorising it, so this is
// the same work as the JavaScript loop it is compared with, and the sum stays in a register.
// Any n >= 0 is accepted (9e18 would run for years): the loop stops at its stop token.
long sum_range(long n) {
  if (n < 0) throw BadArguments(fmt::format("sum_range: n = {} must be >= 0", n));
  // The stop token is looked at between blocks, so the inner loop is the benchmark's loop exactly
  // (a test in it cost a quarter of crew serve's compute throughput).
  const std::stop_token stop = this_task::stop_token();
  long sum = 0;
  for (long block = 0; block < n;) {
    if (stop.stop_requested()) stopped("sum_range");
    const long end = block + std::min(n - block, kStopCheckEvery);
    for (long i = block; i < end; ++i) {
      sum += i;
      asm volatile("" : "+r"(sum));
    }
    block = end;
  }
  return sum;
}

long count_primes(long n) {
  if (n < 0 || n > 100'000'000) {
    throw BadArguments(fmt::format("count_primes: n = {} is outside 0..100000000", n));
  }
  const std::stop_token stop = this_task::stop_token();
  std::vector<bool> composite(static_cast<std::size_t>(n), false);
  long count = 0;
  for (long i = 2; i < n; ++i) {
    if ((i & (kStopCheckEvery - 1)) == 0 && stop.stop_requested()) stopped("count_primes");
    if (composite[static_cast<std::size_t>(i)]) continue;
    ++count;
    for (long j = i * i; j < n; j += i) composite[static_cast<std::size_t>(j)] = true;
  }
  return count;
}

std::vector<double> sort_numbers(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v;
}

std::string sha256(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &len, EVP_sha256(), nullptr) != 1) {
    crew::detail::throw_crypto_error("sha256: OpenSSL EVP_Digest");
  }
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

int sleep_ms(int ms) {
  if (ms < 0 || ms > 600'000) {
    throw BadArguments(fmt::format("sleep_ms: ms = {} is outside 0..600000", ms));
  }
  // Wakes early at the stop token (a wait on a condition nobody notifies but the token).
  std::mutex mutex;
  std::condition_variable_any never;
  std::unique_lock lock(mutex);
  const std::stop_token stop = this_task::stop_token();
  (void)never.wait_for(lock, stop, std::chrono::milliseconds(ms), [] { return false; });
  if (stop.stop_requested()) stopped("sleep_ms");
  return ms;
}

}  // namespace

void add_builtin_tasks(Tasks& tasks) {
  tasks.add("fib", fib);
  tasks.add("sum_range", sum_range);
  tasks.add("count_primes", count_primes);
  tasks.add("sort_numbers", sort_numbers);
  tasks.add("sha256", sha256);
  tasks.add("sleep_ms", sleep_ms);
}

void load_plugins(const std::vector<std::string>& paths, Tasks& tasks) {
  for (const auto& path : paths) {
    // Never unloaded: the registered functions live in the library.
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = ::dlerror();
      throw PluginError(
          fmt::format("plugin '{}' could not be loaded: {}; give the path of a shared "
                      "library built against this crew",
                      path, why != nullptr ? why : "unknown error"));
    }
    using Register = void (*)(Tasks&);
    auto fn = reinterpret_cast<Register>(::dlsym(handle, kPluginSymbol));
    if (fn == nullptr) {
      throw PluginError(fmt::format(
          "plugin '{}' does not export `extern \"C\" void {}(crew::Tasks&)`; define it in the "
          "library to register its tasks",
          path, kPluginSymbol));
    }
    try {
      fn(tasks);
    } catch (const std::exception& e) {
      throw PluginError(fmt::format("plugin '{}' failed to register: {}", path, e.what()));
    }
  }
}

}  // namespace crew::serve_app
