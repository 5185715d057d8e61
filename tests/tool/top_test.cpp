// crew top (tools/crew/top): the model from monitor answers, and the frames rendered from it,
// compared as text for given sizes.
#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "client.hpp"
#include "keys.hpp"
#include "model.hpp"
#include "render.hpp"
#include "text.hpp"

namespace {

using crew::tool::top::apply_monitor;
using crew::tool::top::Key;
using crew::tool::top::render;
using crew::tool::top::RenderOptions;
using crew::tool::top::Size;
using crew::tool::top::SortKey;
using crew::tool::top::sparkline;
using crew::tool::top::TopModel;
using nlohmann::json;

// Two task workers and the server, as docs/monitor.md shows them.
json answer() {
  return json::parse(R"({
    "latest": {
      "seq": 42, "time": 1765012345.0, "interval_s": 1.0,
      "server": {"worker": 0, "pid": 1234, "cluster": 0, "isolation": "process",
                 "backend": "local", "uptime_s": 3725.0, "version": "0.1.0"},
      "totals": {"requests_per_s": 120.0, "errors_per_s": 1.0, "p50_s": 0.0011, "p99_s": 0.009,
                 "tasks_per_s": 118.0, "queued": 3, "busy": 2, "workers": 2, "wait_p99_s": 0.0004,
                 "cpu_percent": 180.5, "rss_bytes": 73400320, "pss_bytes": 51200000,
                 "restarts": 1, "lag_s": 0.0002, "utilization": 0.5, "connections": 7},
      "workers": [
        {"id": "server", "kind": "server", "server": 0, "pid": 1234, "state": "ready",
         "uptime_s": 3725.0, "tasks": 0, "errors": 0, "restarts": 0, "tasks_per_s": null,
         "p99_s": 0.009, "cpu_percent": 20.5, "rss_bytes": 52428800, "pss_bytes": 40000000,
         "leak_suspected": false, "last_exit": null, "log": ["listening on http://127.0.0.1:8080"]},
        {"id": "crew-task-10", "kind": "task", "server": 0, "pid": 1250, "state": "idle",
         "uptime_s": 65.0, "tasks": 100, "errors": 0, "restarts": 0, "tasks_per_s": 58.0,
         "p99_s": 0.004, "cpu_percent": 65.0, "rss_bytes": 9000000, "pss_bytes": 4500000,
         "leak_suspected": false, "last_exit": null, "log": []},
        {"id": "crew-task-2", "kind": "task", "server": 0, "pid": 1240, "state": "busy",
         "uptime_s": 10.0, "tasks": 512, "errors": 2, "restarts": 1, "tasks_per_s": 60.0,
         "p99_s": null, "cpu_percent": 95.0, "rss_bytes": 8000000, "pss_bytes": 4000000,
         "leak_suspected": true,
         "last_exit": {"signal": 9, "code": null, "reason": "signal", "time": 1765012340.0},
         "log": ["fib(30) started", "fib(30) = 832040", "\u001b[2Jboom\tdone"]}
      ],
      "tasks": []
    },
    "history": [
      {"seq": 39, "time": 1765012342.0, "totals": {"requests_per_s": 0.0, "p99_s": null}, "workers": []},
      {"seq": 40, "time": 1765012343.0, "totals": {"requests_per_s": 60.0, "p99_s": 0.0045}, "workers": []},
      {"seq": 41, "time": 1765012344.0, "totals": {"requests_per_s": 90.0, "p99_s": 0.006}, "workers": []},
      {"seq": 42, "time": 1765012345.0, "totals": {"requests_per_s": 120.0, "p99_s": 0.009}, "workers": []}
    ]
  })");
}

// The golden frames, as they read on the terminal.
const char* const GOLDEN_80x24 =
    R"(crew top  http://127.0.0.1:8080  process/local  up 1h02m  v0.1.0  #42
req/s 120.0  err/s 1.0  p50 1.1ms  p99 9.0ms  conns 7
tasks/s 118.0  queued 3  busy 2/2  cpu 180.5%  rss 70.0M  restarts 1
req/s                                                              ▁▅▇█    120.0
p99                                                                 ▅▆█    9.0ms
  ID▼              PID STATE      CPU%     RSS  TASKS/S      P99  RESTARTS
> crew-task-2     1240 busy       95.0   !7.6M     60.0        -         1
  crew-task-10    1250 idle       65.0    8.6M     58.0    4.0ms         0
  server          1234 ready      20.5   50.0M        -    9.0ms         0
── log crew-task-2 · pid 1240 · last exit: signal 9, 5s ago ────────────────────
fib(30) started
fib(30) = 832040
?[2Jboom done










j/k select  s sort: id  r reload  q quit)";
const char* const GOLDEN_40x10 = R"(crew top  http://127.0.0.1:8080  proces…
req/s 120.0  err/s 1.0  p50 1.1ms  p99 …
tasks/s 118.0  queued 3  busy 2/2  cpu …
  ID▼          STATE      CPU%     RSS
> crew-task-2  busy       95.0   !7.6M
  crew-task-10 idle       65.0    8.6M
  server       ready      20.5   50.0M
── log crew-task-2 · pid 1240 · last ex…
?[2Jboom done
j/k select  s sort: id  r reload  q quit)";
const char* const GOLDEN_140x16 =
    R"(crew top  http://127.0.0.1:8080  process/local  up 1h02m  v0.1.0  #42
req/s 120.0  err/s 1.0  p50 1.1ms  p99 9.0ms  conns 7
tasks/s 118.0  queued 3  busy 2/2  cpu 180.5%  rss 70.0M  restarts 1
req/s                                                                                                                          ▁▅▇█    120.0
p99                                                                                                                             ▅▆█    9.0ms
  ID               PID STATE     CPU%▼     RSS     PSS  TASKS/S      P99    TASKS  ERRORS  RESTARTS  UPTIME
  crew-task-2     1240 busy       95.0   !7.6M    3.8M     60.0        -      512       2         1     10s
  crew-task-10    1250 idle       65.0    8.6M    4.3M     58.0    4.0ms      100       0         0   1m05s
> server          1234 ready      20.5   50.0M   38.1M        -    9.0ms        0       0         0   1h02m
── log server · pid 1234 ───────────────────────────────────────────────────────────────────────────────────────────────────────────────────
listening on http://127.0.0.1:8080




j/k select  s sort: cpu  r reload  q quit)";

TopModel model() {
  TopModel m;
  m.url = "http://127.0.0.1:8080";
  apply_monitor(m, answer());
  return m;
}

std::vector<std::string> lines(const std::string& frame) {
  std::vector<std::string> out;
  std::istringstream in(frame);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// Columns on the terminal: one per UTF-8 code point.
std::size_t width(const std::string& s) {
  return static_cast<std::size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

TEST(TopModel, ReadsTheLatestSampleAndTheHistory) {
  const TopModel m = model();
  EXPECT_EQ(m.seq, 42);
  EXPECT_EQ(m.isolation, "process");
  ASSERT_EQ(m.workers.size(), 3u);
  EXPECT_EQ(m.workers[2].id, "crew-task-2");
  EXPECT_EQ(m.workers[2].pid, 1240);
  EXPECT_FALSE(m.workers[2].p99_s.has_value());
  EXPECT_TRUE(m.workers[2].leak_suspected);
  ASSERT_TRUE(m.workers[2].last_exit.has_value());
  EXPECT_EQ(m.workers[2].last_exit->signal, 9);
  EXPECT_FALSE(m.workers[2].last_exit->code.has_value());
  EXPECT_EQ(m.workers[2].log.size(), 3u);
  ASSERT_EQ(m.history.size(), 4u);
  EXPECT_FALSE(m.history[0].p99_s.has_value());
  EXPECT_DOUBLE_EQ(m.history[3].requests_per_s, 120.0);
  EXPECT_EQ(m.totals.connections, 7u);
}

TEST(TopModel, AppendsOnlyNewHistoryFromSinceAnswers) {
  TopModel m = model();
  json next = answer();
  next["latest"]["seq"] = 44;
  next["history"] = json::parse(R"([
    {"seq": 42, "totals": {"requests_per_s": 1.0}},
    {"seq": 43, "totals": {"requests_per_s": 2.0}},
    {"seq": 44, "totals": {"requests_per_s": 3.0}}])");
  apply_monitor(m, next);
  EXPECT_EQ(m.seq, 44);
  ASSERT_EQ(m.history.size(), 6u);
  EXPECT_EQ(m.history[3].seq, 42);
  EXPECT_DOUBLE_EQ(m.history[3].requests_per_s, 120.0);  // the one already held stays
  EXPECT_EQ(m.history[5].seq, 44);
}

TEST(TopModel, ARestartedServerReplacesTheHistory) {
  TopModel m = model();
  json next = answer();
  next["latest"]["seq"] = 2;
  next["history"] = json::parse(R"([{"seq": 1}, {"seq": 2}])");
  apply_monitor(m, next);
  ASSERT_EQ(m.history.size(), 2u);
  EXPECT_EQ(m.history[0].seq, 1);
}

TEST(TopModel, ANullLatestBeforeTheFirstSampleChangesNothing) {
  TopModel m;
  apply_monitor(m, json::parse(R"({"latest": null, "history": []})"));
  EXPECT_EQ(m.seq, -1);
  m = model();
  apply_monitor(m, json::parse(R"({"latest": null, "history": []})"));
  EXPECT_EQ(m.seq, 42);
  EXPECT_EQ(m.workers.size(), 3u);
}

TEST(TopModel, KeepsABoundedHistory) {
  TopModel m = model();
  json next = answer();
  next["history"] = json::array();
  for (int seq = 43; seq < 43 + 2000; ++seq) next["history"].push_back({{"seq", seq}});
  next["latest"]["seq"] = 43 + 1999;
  apply_monitor(m, next);
  ASSERT_EQ(m.history.size(), crew::tool::top::kHistoryKept);
  EXPECT_EQ(m.history.back().seq, 43 + 1999);
}

TEST(TopModel, ABadAnswerNamesTheFieldAndChangesNothing) {
  TopModel m = model();
  auto message = [&](const json& bad) {
    try {
      apply_monitor(m, bad);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(json::parse(R"({"status": "ok"})")).find("answer.latest is missing"),
            std::string::npos);
  json bad = answer();
  bad["latest"]["workers"][1]["cpu_percent"] = "high";
  EXPECT_NE(message(bad).find("latest.workers[1].cpu_percent is not a number"), std::string::npos);
  bad = answer();
  bad["history"] = json::object();
  EXPECT_NE(message(bad).find("answer.history is not an array"), std::string::npos);
  EXPECT_EQ(m.history.size(), 4u);
  EXPECT_EQ(m.workers.size(), 3u);
}

TEST(TopSparkline, ScalesToTheLargestValueShown) {
  EXPECT_EQ(sparkline({0.0, 5.0, 10.0}, 3), "▁▅█");
  // Any traffic is above the lowest block; a missing value is a gap.
  EXPECT_EQ(sparkline({0.001, std::nullopt, 100.0}, 3), "▂ █");
  EXPECT_EQ(sparkline({2.0, 2.0}, 4), "  ██");
  // Only the newest values that fit; the scale is theirs (100 is no longer shown).
  EXPECT_EQ(sparkline({100.0, 1.0, 2.0}, 2), "▅█");
  EXPECT_EQ(sparkline({0.0, 0.0}, 2), "▁▁");
  EXPECT_EQ(sparkline({1.0}, 0), "");
}

RenderOptions plain(std::string selected = {}, SortKey sort = SortKey::id) {
  RenderOptions o;
  o.selected = std::move(selected);
  o.sort = sort;
  return o;
}

// Every frame of a bounded size: exactly that many lines, none wider, the status bar last.
void expect_fits(const std::string& frame, Size size) {
  const auto all = lines(frame);
  ASSERT_EQ(all.size(), static_cast<std::size_t>(size.rows)) << frame;
  for (const auto& line : all) EXPECT_LE(width(line), static_cast<std::size_t>(size.cols)) << line;
  EXPECT_EQ(all.back().find("j/k select"), 0u) << frame;
}

TEST(TopRender, Frame80x24) {
  const std::string frame = render(model(), Size{80, 24}, plain());
  expect_fits(frame, Size{80, 24});
  EXPECT_EQ(frame, GOLDEN_80x24);
}

// Below 14 lines no sparklines; at 40 columns only id, state, CPU and RSS; the log keeps its
// newest line.
TEST(TopRender, FrameNarrow40x10) {
  const std::string frame = render(model(), Size{40, 10}, plain());
  expect_fits(frame, Size{40, 10});
  EXPECT_EQ(frame, GOLDEN_40x10);
}

// Wide: PSS, tasks, errors and uptime too; sorted by CPU with the last row selected.
TEST(TopRender, FrameWide140x16) {
  const std::string frame = render(model(), Size{140, 16}, plain("server", SortKey::cpu));
  expect_fits(frame, Size{140, 16});
  EXPECT_EQ(frame, GOLDEN_140x16);
}

// --once: every row and the selected worker's whole log, no status bar.
TEST(TopRender, UnboundedFrameForScripts) {
  const std::string frame = render(model(), Size{80, 0}, plain("crew-task-10"));
  const auto all = lines(frame);
  ASSERT_EQ(all.size(), 5u + 1 + 3 + 1);
  EXPECT_EQ(all[6], "  crew-task-2     1240 busy       95.0   !7.6M     60.0        -         1");
  EXPECT_EQ(all[7], "> crew-task-10    1250 idle       65.0    8.6M     58.0    4.0ms         0");
  EXPECT_EQ(all[9],
            "── log crew-task-10 · pid 1250 ─────────────────────────────────────────────────");
  EXPECT_EQ(frame.find("q quit"), std::string::npos);
}

TEST(TopRender, SortsLargestFirstMissingLast) {
  const TopModel m = model();
  auto ids = [&](SortKey key) {
    std::string out;
    for (const auto* w : crew::tool::top::sorted_workers(m, key)) out += w->id + " ";
    return out;
  };
  EXPECT_EQ(ids(SortKey::id), "crew-task-2 crew-task-10 server ");
  EXPECT_EQ(ids(SortKey::cpu), "crew-task-2 crew-task-10 server ");
  EXPECT_EQ(ids(SortKey::rss), "server crew-task-10 crew-task-2 ");
  EXPECT_EQ(ids(SortKey::tasks_per_s), "crew-task-2 crew-task-10 server ");  // server: null
  EXPECT_EQ(ids(SortKey::p99), "server crew-task-10 crew-task-2 ");          // crew-task-2: null
  EXPECT_EQ(ids(SortKey::restarts), "crew-task-2 crew-task-10 server ");
  // s cycles through every order and back.
  SortKey key = SortKey::id;
  for (int i = 0; i < 6; ++i) key = crew::tool::top::next_sort(key);
  EXPECT_EQ(key, SortKey::id);
}

TEST(TopRender, SelectionMovesInTableOrderAndStaysInside) {
  using crew::tool::top::move_selection;
  const TopModel m = model();
  EXPECT_EQ(move_selection(m, SortKey::id, "", 0), "crew-task-2");
  EXPECT_EQ(move_selection(m, SortKey::id, "crew-task-2", 1), "crew-task-10");
  EXPECT_EQ(move_selection(m, SortKey::rss, "crew-task-2", -1), "crew-task-10");
  EXPECT_EQ(move_selection(m, SortKey::id, "server", 1), "server");
  EXPECT_EQ(move_selection(m, SortKey::id, "crew-task-2", -1), "crew-task-2");
  EXPECT_EQ(move_selection(m, SortKey::id, "gone", 1), "crew-task-2");
  EXPECT_EQ(move_selection(TopModel{}, SortKey::id, "x", 1), "");
}

TEST(TopRender, TheSelectedRowIsMarkedAndItsLogShown) {
  const auto all = lines(render(model(), Size{80, 24}, plain("server")));
  EXPECT_EQ(all[8].substr(0, 8), "> server");
  EXPECT_EQ(all[6].substr(0, 4), "  cr");
  EXPECT_EQ(all[9].find("── log server · pid 1234"), 0u);
  EXPECT_EQ(all[10], "listening on http://127.0.0.1:8080");
}

TEST(TopRender, ColourOnlyWhenAsked) {
  RenderOptions o = plain("server");
  EXPECT_EQ(render(model(), Size{80, 24}, o).find('\x1b'), std::string::npos);
  o.color = true;
  const auto all = lines(render(model(), Size{80, 24}, o));
  EXPECT_EQ(all[8].find("\x1b[7m> \x1b[0m\x1b[7mserver"), 0u) << all[8];          // reverse video
  EXPECT_NE(all[6].find("\x1b[31m  !7.6M\x1b[0m"), std::string::npos) << all[6];  // a leak: red
  EXPECT_NE(all[6].find("\x1b[33mbusy"), std::string::npos) << all[6];
}

TEST(TopRender, CutsWhatDoesNotFit) {
  TopModel m = model();
  m.workers[0].id = "a-very-long-worker-name-that-goes-on-and-on";
  m.workers[0].log = {std::string(200, 'x')};
  const std::string frame = render(m, Size{60, 20}, plain(m.workers[0].id, SortKey::rss));
  expect_fits(frame, Size{60, 20});
  const auto all = lines(frame);
  // The id column takes what the kept columns leave: 60 - 43.
  EXPECT_EQ(all[6], "> a-very-long-work…    1234 ready      20.5   50.0M        -");
  EXPECT_EQ(all.back().substr(0, 5), "j/k s");
  EXPECT_EQ(all[10], std::string(59, 'x') + "…");
}

TEST(TopRender, ScrollsToKeepTheSelectionOnScreen) {
  TopModel m = model();
  m.workers.resize(1);
  m.workers[0].log.clear();
  for (int i = 1; i <= 20; ++i) {
    crew::tool::top::Worker w = m.workers[0];
    w.id = "crew-task-" + std::to_string(i);
    m.workers.push_back(w);
  }
  const auto all = lines(render(m, Size{80, 16}, plain("crew-task-15")));
  // 16 lines: 6 above the rows, the log title and the status bar below, so 8 rows; the
  // selected one is the last of them.
  EXPECT_EQ(all[13].substr(0, 14), "> crew-task-15");
  EXPECT_EQ(all[6].substr(0, 14), "  crew-task-8 ");
  EXPECT_EQ(all[14].find("── log crew-task-15"), 0u);
}

TEST(TopRender, TinyTerminalsKeepTheStatusBar) {
  for (int rows = 1; rows <= 8; ++rows) {
    const std::string frame = render(model(), Size{20, rows}, plain());
    expect_fits(frame, Size{20, rows});
  }
  EXPECT_EQ(render(model(), Size{20, 1}, plain()), "j/k select  s sort:…");
  EXPECT_EQ(render(TopModel{}, Size{30, 3}, plain()),
            "crew top    waiting for the f…\n  ID▼ STATE      CPU%     RSS\nj/k select  s sort: id "
            " r rel…");
}

TEST(TopText, LogLinesCannotDriveTheTerminal) {
  using crew::tool::top::printable;
  EXPECT_EQ(printable("a\x1b[2J\tb\x7f"), "a?[2J b?");
  EXPECT_EQ(printable("c\u009b2Jd"), "c?2Jd");  // C1 CSI
  EXPECT_EQ(printable("µs ▁ ü"), "µs ▁ ü");     // other UTF-8 stays
}

TEST(TopText, NumbersInShortUnits) {
  using namespace crew::tool::top;
  EXPECT_EQ(rate(12345.0), "12.3k");
  EXPECT_EQ(rate(std::nullopt), "-");
  EXPECT_EQ(seconds(0.000495), "495µs");
  EXPECT_EQ(seconds(2.5), "2.50s");
  EXPECT_EQ(bytes(512), "512B");
  EXPECT_EQ(bytes(3ull << 30), "3.0G");
  EXPECT_EQ(age(59.9), "59s");
  EXPECT_EQ(age(2 * 86400 + 5 * 3600), "2d05h");
  EXPECT_EQ(crew::tool::top::fit("abcdef", 4), "abc…");
  EXPECT_EQ(crew::tool::top::fit("ab", 4, true), "  ab");
}

TEST(TopKeys, DecodesKeysAndArrowsAcrossReads) {
  using crew::tool::top::decode_keys;
  std::string pending;
  EXPECT_EQ(decode_keys("jkx sr\x03q", pending),
            (std::vector<Key>{Key::down, Key::up, Key::sort, Key::reload, Key::quit, Key::quit}));
  EXPECT_EQ(decode_keys("\x1b[A\x1bOB\x1b[5~", pending), (std::vector<Key>{Key::up, Key::down}));
  EXPECT_EQ(decode_keys("\x1b[", pending), std::vector<Key>{});
  EXPECT_EQ(decode_keys("B", pending), std::vector<Key>{Key::down});
  EXPECT_EQ(decode_keys("\x1bq", pending), std::vector<Key>{Key::quit});  // a lone ESC, then q
  EXPECT_TRUE(pending.empty());
}

TEST(TopUrl, ParsesAndExplainsBadUrls) {
  using crew::tool::top::parse_url;
  const auto u = parse_url("https://[::1]:8443/crew/");
  EXPECT_EQ(u.scheme, "https");
  EXPECT_EQ(u.host, "::1");
  EXPECT_EQ(u.port, "8443");
  EXPECT_EQ(u.base, "/crew");
  EXPECT_EQ(u.text, "https://[::1]:8443/crew");
  EXPECT_EQ(parse_url("http://localhost").port, "80");
  auto message = [](const char* url) {
    try {
      parse_url(url);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("127.0.0.1:8080").find("no scheme"), std::string::npos);
  EXPECT_NE(message("ftp://h:1").find("scheme 'ftp'"), std::string::npos);
  EXPECT_NE(message("http://h:99999").find("port '99999'"), std::string::npos);
  EXPECT_NE(message("http://u:p@h:1").find("--token-file"), std::string::npos);
  EXPECT_NE(message("http://:8080").find("no host"), std::string::npos);
}

}  // namespace
