// crew pipe: streams IN (or stdin) through a chain of transforms to OUT (or stdout), running
// compression and encryption in parallel on a ThreadPool with bounded memory.
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <crew/buffer.hpp>
#include <crew/pool.hpp>
#include <crew/stream/codec.hpp>

#include "codec_chain.hpp"
#include "commands.hpp"
#include "progress.hpp"
#include "transforms.hpp"

namespace crew::tool {
namespace {

constexpr std::size_t kReadChunk = std::size_t{1} << 20;

enum class Kind { gzip, gunzip, encrypt, decrypt, upper, sha256 };

struct Step {
  Kind kind;
  int level = 6;         // gzip
  std::string key_file;  // encrypt, decrypt
  std::string flag;      // as written, for messages
};

struct PipeOptions {
  std::vector<Step> steps;
  std::size_t threads = 0;
  bool progress = false;
  bool no_progress = false;
  std::string in;
  std::string out;
  std::vector<std::string> gzip_levels;  // CLI11's target for --gzip; the steps are what counts
};

Step make_step(Kind kind, std::string flag, int level = 6, std::string key_file = {}) {
  return Step{
      .kind = kind, .level = level, .key_file = std::move(key_file), .flag = std::move(flag)};
}

[[noreturn]] void throw_errno(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

// The temporary output file, removed if a signal ends the process before the rename. A fixed
// buffer because the signal handler may only call async-signal-safe functions (unlink).
char g_temp_path[4096];
std::atomic<bool> g_temp_live{false};

extern "C" void on_fatal_signal(int sig) {
  if (g_temp_live.load()) unlink(g_temp_path);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// Writes to a temporary file next to the destination and renames it over the destination only
// on commit(), so a failed or interrupted run never leaves a truncated OUT.
class AtomicOutput {
 public:
  explicit AtomicOutput(const std::string& path) : path_(path) {
    std::string tmpl = path + ".crew-tmp.XXXXXX";
    if (tmpl.size() >= sizeof g_temp_path) throw std::invalid_argument("output path too long");
    std::memcpy(g_temp_path, tmpl.c_str(), tmpl.size() + 1);
    fd_ = mkstemp(g_temp_path);
    if (fd_ < 0) throw_errno(fmt::format("cannot create a temporary file next to '{}'", path));
    temp_ = g_temp_path;
    g_temp_live.store(true);
    // mkstemp makes the file 0600; give it the mode a plain open() would.
    mode_t mask = umask(0);
    umask(mask);
    fchmod(fd_, 0666 & ~mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, on_fatal_signal);
  }
  AtomicOutput(const AtomicOutput&) = delete;
  AtomicOutput& operator=(const AtomicOutput&) = delete;
  ~AtomicOutput() {
    if (fd_ >= 0) close(fd_);
    if (!committed_) {
      g_temp_live.store(false);
      unlink(temp_.c_str());
    }
  }
  int fd() const { return fd_; }
  void commit() {
    int fd = fd_;
    fd_ = -1;
    if (close(fd) != 0) throw_errno(fmt::format("cannot write '{}'", temp_));
    if (rename(temp_.c_str(), path_.c_str()) != 0) {
      throw_errno(fmt::format("cannot rename '{}' to '{}'", temp_, path_));
    }
    committed_ = true;
    g_temp_live.store(false);
  }

 private:
  std::string path_;
  std::string temp_;
  int fd_ = -1;
  bool committed_ = false;
};

void write_all(int fd, const Buffer& b) {
  const std::byte* p = b.data();
  std::size_t left = b.size();
  while (left > 0) {
    ssize_t n = write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("write failed");
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

// Reads up to kReadChunk bytes (one read: a pipe or a terminal delivers what it has).
std::optional<Buffer> read_chunk(int fd) {
  Buffer b = Buffer::uninitialized(kReadChunk);
  ssize_t n;
  do {
    n = read(fd, b.data(), b.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) throw_errno("read failed");
  if (n == 0) return std::nullopt;
  if (static_cast<std::size_t>(n) == b.size()) return b;
  return Buffer::copy_of(std::span<const std::byte>(b.data(), static_cast<std::size_t>(n)));
}

// --gzip's value: a bare --gzip arrives from CLI11 as "true", --gzip=N as "N". -1 if invalid.
int parse_level(const std::string& v) {
  if (v == "true") return 6;
  if (v.empty() || v.size() > 2 || !std::all_of(v.begin(), v.end(), ::isdigit)) return -1;
  return std::stoi(v);
}

int usage_error(const std::string& what) {
  std::fprintf(stderr, "crew pipe: usage error: %s\n", what.c_str());
  return kExitUsage;
}

int run_pipe(const PipeOptions& o) {
  // Build the chain first: bad key files are usage errors, reported before any I/O.
  std::vector<std::unique_ptr<stream::ChunkCodec>> codecs;
  std::string in_label = o.in.empty() ? "-" : o.in;
  try {
    std::string prev;
    for (const Step& s : o.steps) {
      switch (s.kind) {
        case Kind::gzip:
          codecs.push_back(stream::make_gzip_codec({.level = s.level}));
          break;
        case Kind::gunzip:
          codecs.push_back(stream::make_gunzip_codec());
          break;
        case Kind::encrypt:
          codecs.push_back(stream::make_encrypt_codec(stream::Key::from_file(s.key_file)));
          break;
        case Kind::decrypt:
          codecs.push_back(stream::make_decrypt_codec(stream::Key::from_file(s.key_file)));
          break;
        case Kind::upper:
          codecs.push_back(make_upper_codec());
          break;
        case Kind::sha256: {
          std::string label = prev.empty() ? in_label : fmt::format("(after {})", prev);
          codecs.push_back(make_sha256_codec([label](const std::string& hex) {
            std::fprintf(stderr, "%s  %s\n", hex.c_str(), label.c_str());
          }));
          break;
        }
      }
      prev = s.flag;
    }
  } catch (const std::exception& e) {
    return usage_error(e.what());
  }

  int in_fd = STDIN_FILENO;
  struct FdCloser {
    int fd;
    ~FdCloser() {
      if (fd > STDERR_FILENO) close(fd);
    }
  } in_closer{-1};
  if (!o.in.empty() && o.in != "-") {
    in_fd = open(o.in.c_str(), O_RDONLY | O_CLOEXEC);
    if (in_fd < 0)
      return usage_error(fmt::format("cannot open '{}': {}", o.in, std::strerror(errno)));
    in_closer.fd = in_fd;
  }
  std::optional<std::uint64_t> total;
  struct stat st {};
  if (fstat(in_fd, &st) == 0 && S_ISREG(st.st_mode)) {
    total = static_cast<std::uint64_t>(st.st_size);
    posix_fadvise(in_fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  }

  std::unique_ptr<AtomicOutput> out_file;
  int out_fd = STDOUT_FILENO;
  if (!o.out.empty() && o.out != "-") {
    if (std::filesystem::is_directory(o.out)) {
      return usage_error(fmt::format("'{}' is a directory", o.out));
    }
    try {
      out_file = std::make_unique<AtomicOutput>(o.out);
    } catch (const std::exception& e) {
      return usage_error(e.what());
    }
    out_fd = out_file->fd();
  }

  Progress progress(total, !o.no_progress && (o.progress || isatty(STDERR_FILENO) == 1));
  std::uint64_t done = 0;
  try {
    std::size_t threads = o.threads ? o.threads : default_thread_count();
    ThreadPool pool({.max_threads = threads, .name = "crew-pipe"});
    CodecChain chain(std::move(codecs), pool, 2 * threads + 2,
                     [out_fd](Buffer b) { write_all(out_fd, b); });
    while (auto chunk = read_chunk(in_fd)) {
      done += chunk->size();
      chain.push(std::move(*chunk));
      progress.update(done);
    }
    chain.finish();
    progress.finish(done);
    if (out_file) out_file->commit();
  } catch (const stream::DataError& e) {
    progress.finish(done);
    std::fprintf(stderr, "crew pipe: data error: %s (input: %s)\n", e.what(), in_label.c_str());
    return kExitData;
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "crew pipe: I/O error: %s\n", e.what());
    return kExitData;
  }
  return kExitOk;
}

}  // namespace

Command add_pipe_command(CLI::App& app) {
  auto options = std::make_shared<PipeOptions>();
  CLI::App* pipe = app.add_subcommand(
      "pipe",
      "Stream IN (default stdin) through the transforms, in the order given, to OUT (default "
      "stdout). Compression and encryption run in parallel; memory stays bounded.");
  pipe->footer(
      "Examples:\n"
      "  crew pipe --gzip big.log big.log.gz\n"
      "  crew pipe --gzip=9 --encrypt key.hex < data > data.gz.crew\n"
      "  crew pipe --decrypt key.hex --gunzip data.gz.crew data\n"
      "  head -c 32 /dev/urandom > key     # a key file: 32 raw bytes or 64 hex digits\n"
      "Exit codes: 0 ok, 1 data error (corrupt input, authentication failure, I/O), 2 usage.\n"
      "Environment: CREW_THREADS (default for --threads), NO_COLOR.");
  auto add_step = [options](Step s) { options->steps.push_back(std::move(s)); };

  // trigger_on_parse makes each callback run as its flag is parsed, so the steps keep the order
  // of the command line, repeated flags included.
  pipe->add_flag("--gzip", options->gzip_levels,
                 "Compress (gzip, libdeflate; optional level 0..12, e.g. --gzip=9)")
      ->option_text("[=LEVEL]")
      ->trigger_on_parse()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->each([add_step](const std::string& v) {
        int level = parse_level(v);
        if (level < 0 || level > 12) {
          throw CLI::ValidationError(fmt::format("level '{}' is not in 0..12", v));
        }
        add_step(make_step(Kind::gzip, "--gzip", level));
      });
  pipe->add_flag_callback(
          "--gunzip", [add_step] { add_step(make_step(Kind::gunzip, "--gunzip")); },
          "Decompress any gzip (parallel for crew's own output)")
      ->trigger_on_parse()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  pipe->add_option_function<std::string>(
          "--encrypt",
          [add_step](const std::string& k) {
            add_step(make_step(Kind::encrypt, "--encrypt", 0, k));
          },
          "Encrypt with AES-256-GCM in authenticated chunks; KEYFILE holds 32 raw bytes or 64 hex "
          "digits")
      ->type_name("KEYFILE")
      ->trigger_on_parse()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  pipe->add_option_function<std::string>(
          "--decrypt",
          [add_step](const std::string& k) {
            add_step(make_step(Kind::decrypt, "--decrypt", 0, k));
          },
          "Decrypt and verify what --encrypt wrote")
      ->type_name("KEYFILE")
      ->trigger_on_parse()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  pipe->add_flag_callback(
          "--upper", [add_step] { add_step(make_step(Kind::upper, "--upper")); }, "ASCII uppercase")
      ->trigger_on_parse()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  pipe->add_flag_callback(
          "--sha256", [add_step] { add_step(make_step(Kind::sha256, "--sha256")); },
          "Pass through; print the SHA-256 of the bytes at this point to stderr")
      ->trigger_on_parse()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  pipe->add_option("--threads,-j", options->threads,
                   "Pool threads (default: CREW_THREADS, else the number of CPUs)")
      ->check(CLI::Range(1, 1024));
  pipe->add_flag("--progress", options->progress,
                 "Show progress on stderr even when it is not a terminal");
  pipe->add_flag("--no-progress", options->no_progress, "Never show progress");
  pipe->add_option("IN", options->in, "Input file (default or '-': stdin)");
  pipe->add_option("OUT", options->out,
                   "Output file (default or '-': stdout); written to a temporary file and renamed "
                   "on success");
  return {pipe, [options] { return run_pipe(*options); }};
}

}  // namespace crew::tool
