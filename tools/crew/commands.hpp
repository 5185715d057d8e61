// The subcommands of the `crew` tool. Each lives in its own <name>.cpp and registers itself on
// the CLI11 app; main.cpp runs the one the user selected.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace crew::tool {

/// Exit codes shared by every subcommand (sysexits values, with issue 7's 2 for usage).
inline constexpr int kExitOk = 0;
inline constexpr int kExitData = 1;   ///< corrupt input, authentication failure, I/O failure
inline constexpr int kExitUsage = 2;  ///< bad flags or arguments (files that cannot be opened)

/// A registered subcommand: its CLI11 app, and what to run when the user selected it.
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

/// `crew pipe`: stream a file through gzip/gunzip/encrypt/decrypt/upper/sha256 (pipe.cpp).
Command add_pipe_command(CLI::App& app);
/// `crew serve`: the HTTP compute service (serve.cpp, src/serve).
Command add_serve_command(CLI::App& app);
/// `crew top`: a live terminal view of a `crew serve` (top.cpp, top/).
Command add_top_command(CLI::App& app);
/// `crew worker`: run the jobs of a Redis queue (worker.cpp, src/redis).
Command add_worker_command(CLI::App& app);

}  // namespace crew::tool
