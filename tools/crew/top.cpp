// `crew top`: a live terminal view of a `crew serve` from its monitor API (docs/monitor.md,
// docs/operations.md, "Watching crew"). The model (top/model), the frame (top/render) and the keys
// (top/keys) are pure; this file fetches, and runs the loop around them.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "commands.hpp"
#include "top/client.hpp"
#include "top/keys.hpp"
#include "top/model.hpp"
#include "top/render.hpp"
#include "top/terminal.hpp"

namespace crew::tool {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

/// Exit code when the server cannot be reached (EX_UNAVAILABLE, as `crew serve` for Redis).
constexpr int kExitUnavailable = 69;

struct Options {
  std::string url = "http://127.0.0.1:8080";
  std::string token_file;
  std::string ca_file;
  bool once = false;
  bool json = false;
};

// A failure that ends `crew top` with `code` and says why.
struct Failure : std::runtime_error {
  Failure(int exit_code, const std::string& message)
      : std::runtime_error(message), code(exit_code) {}
  int code;
};

// The first token of a file in `crew serve --auth-token-file` form: blank lines and '#' comments
// skipped.
std::string read_token(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    throw Failure(kExitUsage, fmt::format("--token-file {}: cannot be read; give a file holding "
                                          "the token on a line",
                                          path));
  }
  for (std::string line; std::getline(in, line);) {
    const auto begin = line.find_first_not_of(" \t\r");
    if (begin == std::string::npos || line[begin] == '#') continue;
    return line.substr(begin, line.find_last_not_of(" \t\r") + 1 - begin);
  }
  throw Failure(kExitUsage,
                fmt::format("--token-file {}: holds no token; write the token on a line", path));
}

// What a refusal says: crew serve's {"error": {"message": ...}}, else the body's start.
std::string detail(const top::Reply& reply) {
  std::string out = reply.body;
  try {
    const json body = json::parse(reply.body);
    const json message = body.at("error").at("message");
    if (message.is_string()) out = message.get<std::string>();
  } catch (const json::exception&) {
  }
  return out.size() > 200 ? out.substr(0, 200) + "…" : out;
}

// A refusal of `target` as a message saying what to do.
std::string refusal(const top::Url& url, const std::string& target, const top::Reply& reply) {
  const std::string what = fmt::format("{}{}: {} {}", url.text, target, reply.status, reply.reason);
  switch (reply.status) {
    case 401:
    case 403:
      return what +
             ": give a token the server accepts with --token-file PATH or CREW_TOKEN (a line of "
             "its --auth-token-file)";
    case 404:
      return what +
             ": not a `crew serve` with the monitor API at this URL; check the URL and "
             "that the server is recent enough";
    default: {
      const std::string why = detail(reply);
      return why.empty() ? what : what + ": " + why;
    }
  }
}

// GET /api/monitor (only what came after `since`, once there is a history) into `model`.
// Returns the answer's `latest` sample.
json fetch(const top::Client& client, top::TopModel& model) {
  const std::string target = model.history.empty()
                                 ? std::string("/api/monitor")
                                 : fmt::format("/api/monitor?since={}", model.history.back().seq);
  top::Reply reply;
  try {
    reply = client.get(target);
  } catch (const std::runtime_error& e) {
    throw Failure(kExitUnavailable, e.what());
  }
  if (reply.status != 200) throw Failure(kExitData, refusal(client.url(), target, reply));
  json answer;
  try {
    answer = json::parse(reply.body);
  } catch (const json::exception&) {
    throw Failure(kExitData, fmt::format("{}{}: the answer is not JSON; is this a `crew serve`?",
                                         client.url().text, target));
  }
  try {
    top::apply_monitor(model, answer);
  } catch (const std::runtime_error& e) {
    throw Failure(kExitData, fmt::format("{}{}: {}", client.url().text, target, e.what()));
  }
  return answer["latest"];
}

// POST /api/cluster/reload; its answer, for the status bar.
std::string reload(const top::Client& client) {
  const std::string target = "/api/cluster/reload";
  try {
    const top::Reply reply = client.post(target);
    if (reply.status == 202) return "reload: 202 started";
    if (reply.status == 401 || reply.status == 403) {
      return "reload: " + refusal(client.url(), target, reply);
    }
    // The status bar is short: the answer without the URL (409: there is no cluster).
    const std::string why = detail(reply);
    return fmt::format("reload: {} {}{}{}", reply.status, reply.reason, why.empty() ? "" : ": ",
                       why);
  } catch (const std::runtime_error& e) {
    return fmt::format("reload: {}", e.what());
  }
}

bool color_wanted() {
  const char* no_color = std::getenv("NO_COLOR");  // https://no-color.org: set and not empty
  return ::isatty(STDOUT_FILENO) && (no_color == nullptr || *no_color == '\0');
}

int run_view(const top::Client& client, top::TopModel& model) {
  top::Terminal terminal;
  top::RenderOptions options;
  options.color = color_wanted();
  std::string pending;
  bool stale = false;  // the status bar says why the last poll failed
  auto next_fetch = std::chrono::steady_clock::now() + 1s;
  for (;;) {
    options.selected = top::move_selection(model, options.sort, options.selected, 0);
    terminal.draw(top::render(model, terminal.size(), options));
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        next_fetch - std::chrono::steady_clock::now());
    const top::Terminal::Event event = terminal.wait(left);
    if (event.signal != 0) return 128 + event.signal;
    for (const top::Key key : top::decode_keys(event.input, pending)) {
      switch (key) {
        case top::Key::quit:
          return kExitOk;
        case top::Key::up:
          options.selected = top::move_selection(model, options.sort, options.selected, -1);
          break;
        case top::Key::down:
          options.selected = top::move_selection(model, options.sort, options.selected, 1);
          break;
        case top::Key::sort:
          options.sort = top::next_sort(options.sort);
          break;
        case top::Key::reload:
          model.status = reload(client);
          break;
      }
    }
    if (std::chrono::steady_clock::now() >= next_fetch) {
      next_fetch = std::chrono::steady_clock::now() + 1s;
      try {
        fetch(client, model);
        if (stale) model.status.clear();
        stale = false;
      } catch (const Failure& e) {
        // The last sample stays on screen; the next second tries again.
        model.status = fmt::format("no sample: {}", e.what());
        stale = true;
      }
    }
  }
}

int run(const Options& options) {
  top::TopModel model;
  std::unique_ptr<top::Client> client;
  try {
    std::string token;
    if (!options.token_file.empty()) {
      token = read_token(options.token_file);
    } else if (const char* env = std::getenv("CREW_TOKEN")) {
      token = env;
    }
    client = std::make_unique<top::Client>(top::parse_url(options.url), token, options.ca_file);
    model.url = client->url().text;
    // The first sample before the screen changes: a wrong URL or token is said on the normal
    // screen, and the first frame already has the workers and their logs.
    json latest = fetch(*client, model);
    // A server that has just started takes its first sample within a second.
    for (int tries = 0; model.seq < 0 && tries < 5; ++tries) {
      std::this_thread::sleep_for(1s);
      latest = fetch(*client, model);
    }
    if (model.seq < 0) {
      throw Failure(kExitData, fmt::format("{}/api/monitor: no sample after 5 s; is the server "
                                           "overloaded?",
                                           client->url().text));
    }
    if (options.json) {
      std::printf("%s\n", latest.dump(2).c_str());
      return kExitOk;
    }
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "crew top: %s\n", e.what());
    return kExitUsage;
  } catch (const Failure& e) {
    std::fprintf(stderr, "crew top: %s\n", e.what());
    return e.code;
  }
  if (options.once) {
    const auto size = top::terminal_size(STDOUT_FILENO);
    const char* env_cols = std::getenv("COLUMNS");
    const int cols = size ? size->cols : env_cols != nullptr ? std::atoi(env_cols) : 0;
    top::RenderOptions plain;
    plain.color = color_wanted();
    const std::string frame =
        top::render(model, top::Size{.cols = cols > 0 ? cols : 80, .rows = 0}, plain);
    std::printf("%s\n", frame.c_str());
    return kExitOk;
  }
  if (!::isatty(STDIN_FILENO) || !::isatty(STDOUT_FILENO)) {
    std::fprintf(stderr,
                 "crew top: the live view needs a terminal on stdin and stdout; in scripts use "
                 "--once (a frame) or --json (the latest sample)\n");
    return kExitUsage;
  }
  return run_view(*client, model);
}

}  // namespace

Command add_top_command(CLI::App& app) {
  CLI::App* top = app.add_subcommand(
      "top",
      "A live terminal view of a `crew serve` (its /api/monitor): a line per worker, totals, "
      "sparklines of requests/s and p99, the selected worker's log. Keys: up/down or j/k select, "
      "s sort, r rolling reload (a cluster), q quit.");
  auto options = std::make_shared<Options>();
  top->add_option("url", options->url, "The server's address, http[s]://HOST:PORT[/prefix]")
      ->capture_default_str();
  top->add_option("--token-file", options->token_file,
                  "Read the bearer token from this file (its first line that is not blank or a "
                  "'#' comment, as in the server's --auth-token-file); else CREW_TOKEN holds it");
  top->add_option("--cacert", options->ca_file,
                  "For https://: trust the PEM certificates in this file (e.g. the server's "
                  "self-signed certificate) instead of the system's");
  auto* once = top->add_flag("--once", options->once,
                             "Print one frame (every worker; colour only on a terminal without "
                             "NO_COLOR) and exit");
  top->add_flag("--json", options->json, "Print the latest sample as JSON and exit")
      ->excludes(once);
  return Command{top, [options] { return run(*options); }};
}

}  // namespace crew::tool
