// Compress and encrypt a large file with a progress bar, then decrypt, decompress and verify —
// the library side of `crew pipe --gzip --encrypt KEY` and `crew pipe --decrypt KEY --gunzip`.
//
//   example_pipe_compress_encrypt [MiB]     (default 8 MiB; try 1024 for a 1 GiB file)
//
// Both pipelines run gzip and AES-256-GCM on a pool, in parallel and in order, with bounded
// memory: the peak buffered bytes per stage are printed with the summary.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <unistd.h>

#include <crew/pool.hpp>
#include <crew/stream.hpp>

namespace cs = crew::stream;
namespace fs = std::filesystem;

namespace {

// A progress bar drawn from a tap() on the input: bytes, percentage, rate and ETA.
class ProgressBar {
 public:
  ProgressBar(std::string label, std::uint64_t total) : label_(std::move(label)), total_(total) {}
  void add(std::uint64_t n) {
    done_ += n;
    auto now = std::chrono::steady_clock::now();
    if (done_ < total_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    double secs = std::chrono::duration<double>(now - start_).count();
    double rate = secs > 0 ? static_cast<double>(done_) / secs : 0;
    double frac = total_ ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
    int filled = static_cast<int>(frac * 30);
    std::fprintf(stderr, "\r%-10s [%.*s%*s] %3.0f%%  %6.1f MiB/s  ETA %4.1fs", label_.c_str(),
                 filled, "##############################", 30 - filled, "", frac * 100,
                 rate / (1 << 20), rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0);
    if (done_ >= total_) std::fprintf(stderr, "\n");
  }

 private:
  std::string label_;
  std::uint64_t total_;
  std::uint64_t done_ = 0;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_{};
};

// Log-like text: compressible, but not trivially.
void generate(const fs::path& path, std::uint64_t bytes) {
  std::ofstream out(path, std::ios::binary);
  std::mt19937_64 rng(42);
  const char* levels[] = {"INFO", "WARN", "DEBUG", "ERROR"};
  char line[160];
  std::uint64_t written = 0;
  while (written < bytes) {
    int n =
        std::snprintf(line, sizeof line, "t=%llu level=%s user=%u path=/api/v1/items/%u ms=%u\n",
                      static_cast<unsigned long long>(written), levels[rng() % 4],
                      static_cast<unsigned>(rng() % 100000), static_cast<unsigned>(rng() % 5000),
                      static_cast<unsigned>(rng() % 900));
    std::uint64_t take = std::min<std::uint64_t>(static_cast<std::uint64_t>(n), bytes - written);
    out.write(line, static_cast<std::streamsize>(take));
    written += take;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::uint64_t mib = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 8;
  const std::uint64_t bytes = mib << 20;
  fs::path dir = fs::temp_directory_path() / ("crew-pipe-example-" + std::to_string(getpid()));
  fs::create_directories(dir);
  const fs::path plain = dir / "data.log", sealed = dir / "data.log.gz.crew",
                 back = dir / "data.roundtrip";
  generate(plain, bytes);
  std::printf("input: %s (%llu MiB of generated log text)\n", plain.c_str(),
              static_cast<unsigned long long>(mib));
  std::fflush(stdout);  // the progress bar goes to stderr; keep the two in order

  const cs::Key key = cs::Key::random();  // in real use: cs::Key::from_file("key.hex")
  crew::ThreadPool pool({.name = "codec"});
  const cs::CodecStageOptions on_pool{.pool = &pool};
  std::string digest_in, digest_out;
  int status = 0;
  try {
    ProgressBar p1("compress", bytes);
    auto seal = cs::read_file(plain, {.chunk = 1 << 20}) |
                cs::tap([&](const crew::Buffer& b) { p1.add(b.size()); }) |
                cs::sha256([&](const std::string& d) { digest_in = d; }) |
                cs::gzip({.level = 6}, on_pool) | cs::encrypt(key, {}, on_pool) |
                cs::write_file(sealed);
    cs::Summary s1 = seal.run().get();
    std::printf("%s", s1.to_string().c_str());
    std::printf("sealed: %llu -> %llu bytes (%.1f%%)\n\n", static_cast<unsigned long long>(bytes),
                static_cast<unsigned long long>(fs::file_size(sealed)),
                100.0 * static_cast<double>(fs::file_size(sealed)) / static_cast<double>(bytes));
    std::fflush(stdout);

    ProgressBar p2("restore", fs::file_size(sealed));
    auto open = cs::read_file(sealed, {.chunk = 1 << 20}) |
                cs::tap([&](const crew::Buffer& b) { p2.add(b.size()); }) |
                cs::decrypt(key, on_pool) | cs::gunzip(on_pool) |
                cs::sha256([&](const std::string& d) { digest_out = d; }) | cs::write_file(back);
    cs::Summary s2 = open.run().get();
    std::printf("%s", s2.to_string().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pipeline failed: %s\n", e.what());
    status = 1;
  }
  if (status == 0) {
    bool same = digest_in == digest_out && fs::file_size(back) == bytes;
    std::printf("sha256 in  %s\nsha256 out %s\n%s\n", digest_in.c_str(), digest_out.c_str(),
                same ? "round trip OK" : "MISMATCH");
    status = same ? 0 : 1;
  }
  fs::remove_all(dir);
  return status;
}
