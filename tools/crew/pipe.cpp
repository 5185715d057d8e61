// crew pipe: streams IN (or stdin) through a chain of transforms to OUT (or stdout) with a
// crew::stream pipeline; compression and encryption run in parallel on one ThreadPool.
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <crew/buffer.hpp>
#include <crew/pool.hpp>
#include <crew/stream.hpp>

#include "commands.hpp"
#include "progress.hpp"

namespace crew::tool {
namespace {

namespace cs = crew::stream;

// Read size: big enough that a gzip block or cipher chunk is one or two reads.
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

// SIGINT, SIGTERM and SIGHUP cancel the pipeline (so write_file removes its temporary file)
// instead of killing the process. They are blocked in every thread (the mask is set before any
// other thread starts, and threads inherit it) and taken by this watcher with sigwait().
// SIGUSR2, sent to the watcher alone, tells it to quit when the run is over.
class SignalWatcher {
 public:
  SignalWatcher() {
    sigemptyset(&set_);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, kQuit}) sigaddset(&set_, sig);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::thread([this] {
      int sig = 0;
      if (sigwait(&set_, &sig) == 0 && sig != kQuit) {
        signal_.store(sig);
        cancel_.request_stop();
      }
    });
  }
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;
  ~SignalWatcher() {
    pthread_kill(thread_.native_handle(), kQuit);  // harmless if it already returned
    thread_.join();
  }
  std::stop_token token() const { return cancel_.get_token(); }
  /// The signal that cancelled the run, or 0.
  int signal() const { return signal_.load(); }

 private:
  static constexpr int kQuit = SIGUSR2;
  sigset_t set_{};
  std::stop_source cancel_;
  std::atomic<int> signal_{0};
  std::thread thread_;
};

// The exception inside a StageError (a codec's DataError, an I/O system_error), or null.
std::exception_ptr root_cause(const std::exception& e) {
  if (const auto* stage = dynamic_cast<const StageError*>(&e)) {
    if (stage->cause()) return stage->cause();
  }
  return nullptr;
}

int run_pipe(const PipeOptions& o) {
  const bool from_stdin = o.in.empty() || o.in == "-";
  const bool to_stdout = o.out.empty() || o.out == "-";
  const std::string in_label = from_stdin ? "-" : o.in;

  // Check what can be checked before anything runs: key files, input, output directory.
  std::vector<std::optional<cs::Key>> keys;
  try {
    for (const Step& s : o.steps) {
      keys.push_back(s.key_file.empty() ? std::nullopt
                                        : std::optional(cs::Key::from_file(s.key_file)));
    }
  } catch (const std::exception& e) {
    return usage_error(e.what());
  }
  std::optional<std::uint64_t> total;
  if (!from_stdin) {
    int fd = open(o.in.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return usage_error(fmt::format("cannot open '{}': {}", o.in, std::strerror(errno)));
    }
    struct stat st {};
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) total = static_cast<std::uint64_t>(st.st_size);
    close(fd);
  } else {
    struct stat st {};
    if (fstat(STDIN_FILENO, &st) == 0 && S_ISREG(st.st_mode)) {
      total = static_cast<std::uint64_t>(st.st_size);
    }
  }
  if (!to_stdout && std::filesystem::is_directory(o.out)) {
    return usage_error(fmt::format("'{}' is a directory", o.out));
  }

  SignalWatcher signals;
  const std::size_t threads = o.threads ? o.threads : default_thread_count();
  ThreadPool pool({.max_workers = threads, .name = "crew-pipe"});
  const cs::CodecStageOptions on_pool{.pool = &pool};
  Progress progress(total, !o.no_progress && (o.progress || isatty(STDERR_FILENO) == 1));
  std::uint64_t done = 0;

  const cs::ReadOptions read{.chunk = kReadChunk};
  cs::Flow<Buffer> flow = from_stdin ? cs::read_fd(STDIN_FILENO, read) : cs::read_file(o.in, read);
  flow = std::move(flow) | cs::tap([&](const Buffer& b) {
           done += b.size();
           progress.update(done);
         });
  std::string prev;
  for (std::size_t i = 0; i < o.steps.size(); ++i) {
    const Step& s = o.steps[i];
    switch (s.kind) {
      case Kind::gzip:
        flow = std::move(flow) | cs::gzip({.level = s.level}, on_pool);
        break;
      case Kind::gunzip:
        flow = std::move(flow) | cs::gunzip(on_pool);
        break;
      case Kind::encrypt:
        flow = std::move(flow) | cs::encrypt(*keys[i], {}, on_pool);
        break;
      case Kind::decrypt:
        flow = std::move(flow) | cs::decrypt(*keys[i], on_pool);
        break;
      case Kind::upper:
        flow = std::move(flow) | cs::uppercase();
        break;
      case Kind::sha256: {
        std::string label = prev.empty() ? in_label : fmt::format("(after {})", prev);
        flow = std::move(flow) | cs::sha256([label](const std::string& hex) {
                 std::fprintf(stderr, "%s  %s\n", hex.c_str(), label.c_str());
               });
        break;
      }
    }
    prev = s.flag;
  }
  // write_file writes a temporary file and renames it only on success.
  auto pipeline = to_stdout ? std::move(flow) | cs::write_fd(STDOUT_FILENO)
                            : std::move(flow) | cs::write_file(o.out);
  try {
    (void)pipeline.run(signals.token()).get();
    progress.finish(done);
    return kExitOk;
  } catch (const Cancelled&) {
    progress.finish(done);
    std::fprintf(stderr, "crew pipe: interrupted by signal %d; %s\n", signals.signal(),
                 to_stdout ? "output incomplete" : "no output written");
    return 128 + (signals.signal() ? signals.signal() : SIGINT);
  } catch (const std::exception& e) {
    progress.finish(done);
    std::exception_ptr cause = root_cause(e);
    try {
      if (cause) std::rethrow_exception(cause);
      throw;
    } catch (const cs::DataError& d) {
      std::fprintf(stderr, "crew pipe: data error: %s (input: %s)\n", d.what(), in_label.c_str());
    } catch (const std::system_error& io) {
      std::fprintf(stderr, "crew pipe: I/O error: %s\n", io.what());
    } catch (...) {
      std::fprintf(stderr, "crew pipe: error: %s\n", e.what());
    }
    return kExitData;
  }
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
