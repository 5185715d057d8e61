// crew — the command-line face of the crew toolbox. One binary, one subcommand per task.
#include <cstdio>
#include <exception>
#include <vector>

#include <crew/process/tasks.hpp>
#include <crew/version.hpp>

#include "commands.hpp"
#include "server.hpp"

int main(int argc, char** argv) {
  // `crew serve --isolation process` and `crew worker` re-execute this binary for their task
  // workers.
  if (crew::is_worker_process()) return crew::serve_app::run_task_worker();
  CLI::App app{"crew: a Node.js-style concurrency toolbox for C++", "crew"};
  app.set_version_flag("--version", "crew " CREW_VERSION_STRING);
  app.require_subcommand(1);
  app.footer(
      "Exit codes: 0 ok, 1 data error (corrupt input, authentication failure, I/O), 2 usage; "
      "crew serve: 0 drained, 1 shutdown timeout hit, 69 cannot listen or reach Redis, 78 bad "
      "plugin; "
      "crew top: 0 ok, 1 refused (401, 404, not a monitor answer), 2 usage, 69 server "
      "unreachable, 128+N left on signal N; "
      "crew worker: 0 stopped, 69 Redis unreachable, 78 bad plugin.");

  std::vector<crew::tool::Command> commands;
  commands.push_back(crew::tool::add_pipe_command(app));
  commands.push_back(crew::tool::add_serve_command(app));
  commands.push_back(crew::tool::add_top_command(app));
  commands.push_back(crew::tool::add_worker_command(app));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version arrive here too, with exit code 0.
    int rc = app.exit(e);
    return rc == 0 ? crew::tool::kExitOk : crew::tool::kExitUsage;
  }
  for (auto& command : commands) {
    if (command.app->parsed()) {
      try {
        return command.run();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "crew %s: error: %s\n", command.app->get_name().c_str(), e.what());
        return crew::tool::kExitData;
      }
    }
  }
  return crew::tool::kExitUsage;
}
