// Writes N bytes of generated, log-like text to stdout (the gzip benchmark's input): access-log
// lines with timestamps, addresses, paths, status codes, sizes, latencies and random request ids.
// Deterministic for a given seed, so every tool compresses the same bytes.
//
//   crew_bench_make_logs BYTES [SEED] > file
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

struct Rng {
  std::uint64_t s;
  std::uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  unsigned below(unsigned n) { return static_cast<unsigned>(next() % n); }
};

const char* const kLevels[] = {"INFO ", "INFO ", "INFO ", "DEBUG", "WARN ", "ERROR"};
const char* const kMethods[] = {"GET", "GET", "GET", "POST", "PUT", "DELETE"};
const char* const kPaths[] = {
    "/api/v1/orders/", "/api/v1/users/", "/static/img/",   "/api/v2/search?q=", "/healthz",
    "/api/v1/cart/",   "/login",         "/api/v1/items/", "/metrics"};
const char* const kAgents[] = {
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/119.0 Safari/537.36",
    "curl/7.88.1",
    "python-requests/2.31.0",
    "Go-http-client/1.1",
    "kube-probe/1.28"};
const int kStatus[] = {200, 200, 200, 200, 201, 204, 301, 304, 400, 401, 403, 404, 500, 503};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s BYTES [SEED] > file\n", argv[0]);
    return 64;
  }
  std::uint64_t total = std::strtoull(argv[1], nullptr, 10);
  Rng rng{argc > 2 ? std::strtoull(argv[2], nullptr, 10) | 1 : 0x9e3779b97f4a7c15ull};
  std::string out;
  out.reserve(1 << 20);
  std::uint64_t written = 0;
  std::uint64_t ms = 1'764'000'000'000ull;  // late 2025, in milliseconds
  char line[512];
  while (written < total) {
    ms += rng.below(40);
    std::uint64_t sec = ms / 1000;
    unsigned h = static_cast<unsigned>(sec / 3600 % 24), m = static_cast<unsigned>(sec / 60 % 60),
             s = static_cast<unsigned>(sec % 60);
    int n = std::snprintf(
        line, sizeof line,
        "2026-11-26T%02u:%02u:%02u.%03uZ %s [worker-%u] 10.%u.%u.%u - %s %s%u %d %uB %u.%ums "
        "req=%016llx ua=\"%s\"\n",
        h, m, s, static_cast<unsigned>(ms % 1000), kLevels[rng.below(6)], rng.below(16),
        rng.below(4), rng.below(256), rng.below(256), kMethods[rng.below(6)], kPaths[rng.below(9)],
        rng.below(100000), kStatus[rng.below(14)], rng.below(65536), rng.below(900), rng.below(10),
        static_cast<unsigned long long>(rng.next()), kAgents[rng.below(6)]);
    out.append(line, static_cast<std::size_t>(n));
    if (out.size() >= (1 << 20)) {
      std::size_t k =
          static_cast<std::size_t>(std::min<std::uint64_t>(out.size(), total - written));
      std::fwrite(out.data(), 1, k, stdout);
      written += k;
      out.clear();
    }
    if (written + out.size() >= total) {
      std::size_t k = static_cast<std::size_t>(total - written);
      std::fwrite(out.data(), 1, k, stdout);
      written += k;
    }
  }
  return 0;
}
