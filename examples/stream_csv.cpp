// A CSV-style line pipeline in constant memory: generate a file of `id,region,amount` records,
// then read it back in 64 KiB chunks, split lines, parse, filter and aggregate
//
//     read_file(path) | lines() | map(parse) | filter(region == "eu") | to(aggregate)
//
// and check the aggregate against a direct computation (a plain getline loop). Memory stays
// bounded by the stage marks whatever the file size: the Summary shows each boundary's peak and
// the process's peak RSS is printed. Default 8 MiB (quick for CI); `--size 1024` (MiB) for 1 GiB.
//
// Node.js equivalent: fs.createReadStream(path).pipe(split()).pipe(parse).pipe(filter)...

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>

#include <sys/resource.h>
#include <unistd.h>

#include <crew/stream.hpp>

namespace cs = crew::stream;
namespace fs = std::filesystem;

namespace {

struct Record {
  std::uint64_t id = 0;
  std::string region;
  std::int64_t amount = 0;  // cents
};

struct Totals {
  std::uint64_t rows = 0;
  std::int64_t sum = 0;
  std::int64_t max = 0;
  bool operator==(const Totals&) const = default;
};

constexpr const char* kRegions[] = {"eu", "us", "apac", "latam"};

// Parses "id,region,amount"; throws on a malformed line (the pipeline would name the line).
Record parse(const std::string& line) {
  const auto c1 = line.find(',');
  const auto c2 = line.find(',', c1 + 1);
  if (c1 == std::string::npos || c2 == std::string::npos) {
    throw std::invalid_argument("malformed record: '" + line + "'");
  }
  Record r;
  r.region = line.substr(c1 + 1, c2 - c1 - 1);
  std::from_chars(line.data(), line.data() + c1, r.id);
  std::from_chars(line.data() + c2 + 1, line.data() + line.size(), r.amount);
  return r;
}

long peak_rss_kib() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t mib = 8;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
      mib = std::strtoull(argv[++i], nullptr, 10);
    } else {
      std::fprintf(stderr, "usage: example_stream_csv [--size MiB]\n");
      return 64;
    }
  }
  if (mib == 0) mib = 1;
  const std::uint64_t target = mib << 20;
  const fs::path path =
      fs::temp_directory_path() / ("crew-stream-csv-" + std::to_string(::getpid()) + ".csv");

  // 1. Generate: a generator of 64 KiB chunks of records, written atomically.
  std::uint64_t written = 0;
  std::uint64_t id = 0;
  std::uint64_t rng = 0x9E3779B97F4A7C15ULL;
  auto next = [&rng] {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
  };
  auto generate = cs::from([&]() -> std::optional<crew::Buffer> {
                    if (written >= target) return std::nullopt;
                    std::string chunk;
                    chunk.reserve(64 * 1024 + 64);
                    while (chunk.size() < 64 * 1024 && written + chunk.size() < target) {
                      const std::uint64_t r = next();
                      chunk += std::to_string(id++);
                      chunk += ',';
                      chunk += kRegions[r % 4];
                      chunk += ',';
                      chunk += std::to_string((r >> 8) % 100000);
                      chunk += '\n';
                    }
                    written += chunk.size();
                    return crew::Buffer::copy_of(chunk);
                  }) |
                  cs::write_file(path);
  try {
    (void)generate.run().get();

    // 2. The pipeline: parse, keep one region, aggregate.
    Totals piped;
    auto p = cs::read_file(path) | cs::lines() | cs::map(parse).named("parse") |
             cs::filter([](const Record& r) { return r.region == "eu"; }) |
             cs::to([&piped](Record r) {
               ++piped.rows;
               piped.sum += r.amount;
               if (r.amount > piped.max) piped.max = r.amount;
             }).named("aggregate");
    const cs::Summary s = p.run().get();

    // 3. The direct computation.
    Totals direct;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      Record r = parse(line);
      if (r.region != "eu") continue;
      ++direct.rows;
      direct.sum += r.amount;
      if (r.amount > direct.max) direct.max = r.amount;
    }
    fs::remove(path);

    std::printf("%s", s.to_string().c_str());
    const double secs = std::chrono::duration<double>(s.elapsed).count();
    std::printf("file %.1f MiB, %llu records; eu: %llu rows, sum %lld, max %lld\n",
                static_cast<double>(written) / (1 << 20),
                static_cast<unsigned long long>(s.stage("lines").items_out),
                static_cast<unsigned long long>(piped.rows), static_cast<long long>(piped.sum),
                static_cast<long long>(piped.max));
    std::printf("pipeline %.2f s (%.0f MB/s); peak RSS %ld KiB\n", secs,
                static_cast<double>(written) / 1e6 / (secs > 0 ? secs : 1), peak_rss_kib());
    if (!(piped == direct) || piped.rows == 0) {
      std::fprintf(stderr, "FAILED: pipeline totals differ from the direct computation\n");
      return 1;
    }
    for (const auto& st : s.stages) {
      if (st.high_water_mark != 0 && st.peak_buffered > st.high_water_mark) {
        std::fprintf(stderr, "FAILED: stage %s buffered %zu > mark %zu\n", st.name.c_str(),
                     st.peak_buffered, st.high_water_mark);
        return 1;
      }
    }
    std::printf("ok: the pipeline's aggregate matches the direct computation\n");
  } catch (const std::exception& e) {
    fs::remove(path);
    std::fprintf(stderr, "example_stream_csv: %s\n", e.what());
    return 1;
  }
  return 0;
}
