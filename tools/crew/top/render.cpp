#include "render.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>

#include <fmt/format.h>

#include "text.hpp"

namespace crew::tool::top {
namespace {

// Task workers are starting, idle, busy or stopping; servers ready or unready.
std::string state_style(const Worker& w) {
  if (w.state == "busy") return "33";
  if (w.state == "idle" || w.state == "ready") return "32";
  if (w.state == "starting" || w.state == "stopping") return "36";
  return "31";
}

struct Column {
  const char* title;
  int width;
  bool right;
  int keep;  // the table drops the lowest first when the terminal is too narrow
  std::optional<SortKey> sorts;
  std::function<std::string(const Worker&)> text;
  std::function<std::string(const Worker&)> style;
};

const std::vector<Column>& all_columns() {
  static const std::vector<Column> kColumns = {
      {"PID",
       7,
       true,
       7,
       {},
       [](const Worker& w) { return w.pid ? fmt::format("{}", *w.pid) : dash(); },
       {}},
      {"STATE",
       8,
       false,
       11,
       {},
       [](const Worker& w) { return w.state.empty() ? dash() : w.state; },
       state_style},
      {"CPU%",
       6,
       true,
       10,
       SortKey::cpu,
       [](const Worker& w) {
         return w.cpu_percent ? fmt::format("{:.1f}", *w.cpu_percent) : dash();
       },
       {}},
      {"RSS", 7, true, 9, SortKey::rss,
       [](const Worker& w) {
         std::string text = w.leak_suspected ? "!" : "";  // a leak is suspected
         return text += bytes(w.rss_bytes);
       },
       [](const Worker& w) { return std::string(w.leak_suspected ? "31" : ""); }},
      {"PSS", 7, true, 1, {}, [](const Worker& w) { return bytes(w.pss_bytes); }, {}},
      {"TASKS/S",
       8,
       true,
       8,
       SortKey::tasks_per_s,
       [](const Worker& w) { return rate(w.tasks_per_s); },
       {}},
      {"P99", 8, true, 6, SortKey::p99, [](const Worker& w) { return seconds(w.p99_s); }, {}},
      {"TASKS", 8, true, 4, {}, [](const Worker& w) { return fmt::format("{}", w.tasks); }, {}},
      {"ERRORS", 7, true, 3, {}, [](const Worker& w) { return fmt::format("{}", w.errors); }, {}},
      {"RESTARTS",
       9,
       true,
       5,
       SortKey::restarts,
       [](const Worker& w) { return fmt::format("{}", w.restarts); },
       {}},
      {"UPTIME", 7, true, 2, {}, [](const Worker& w) { return age(w.uptime_s); }, {}},
  };
  return kColumns;
}

constexpr int kMarker = 2;  // "> " before the selected row, "  " before the others

struct Table {
  int id_width = 2;
  std::vector<const Column*> columns;
};

// The columns that fit in `cols`: the id column gets at least 10 columns (less if no id is
// longer), and the least important columns go first.
Table layout(const std::vector<const Worker*>& rows, int cols) {
  int longest = 3;  // "ID▼"
  for (const Worker* w : rows) longest = std::max(longest, columns(w->id));
  std::vector<const Column*> kept;
  for (const Column& c : all_columns()) kept.push_back(&c);
  auto used = [&] {
    int sum = kMarker;
    for (const Column* c : kept) sum += 1 + c->width;
    return sum;
  };
  while (!kept.empty() && used() + std::min(longest, 10) > cols) {
    kept.erase(std::min_element(kept.begin(), kept.end(), [](const Column* a, const Column* b) {
      return a->keep < b->keep;
    }));
  }
  return Table{.id_width = std::max(3, std::min(longest, cols - used())), .columns = kept};
}

std::string header_line(const TopModel& m, int cols, bool color) {
  Line line(cols, color);
  line.add("crew top", "1").add("  ").add(m.url);
  if (m.seq < 0) return std::move(line.add("  waiting for the first sample…")).str();
  if (!m.isolation.empty()) line.add("  ").add(m.isolation + "/" + m.backend);
  line.add("  up ").add(age(m.uptime_s));
  if (!m.version.empty()) line.add("  v" + m.version);
  return std::move(line.add(fmt::format("  #{}", m.seq))).str();
}

// "label value" pairs, values bold.
std::string pairs_line(const std::vector<std::pair<std::string, std::string>>& pairs, int cols,
                       bool color) {
  Line line(cols, color);
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    line.add(i == 0 ? "" : "  ").add(pairs[i].first + " ").add(pairs[i].second, "1");
  }
  return std::move(line).str();
}

std::vector<std::string> totals_lines(const TopModel& m, int cols, bool color) {
  const Totals& t = m.totals;
  const std::string busy = t.workers ? number(t.busy) + "/" + number(t.workers) : number(t.busy);
  return {pairs_line({{"req/s", rate(t.requests_per_s)},
                      {"err/s", rate(t.errors_per_s)},
                      {"p50", seconds(t.p50_s)},
                      {"p99", seconds(t.p99_s)},
                      {"conns", number(t.connections)}},
                     cols, color),
          pairs_line({{"tasks/s", rate(t.tasks_per_s)},
                      {"queued", number(t.queued)},
                      {"busy", busy},
                      {"cpu", t.cpu_percent ? fmt::format("{:.1f}%", *t.cpu_percent) : dash()},
                      {"rss", bytes(t.rss_bytes)},
                      {"restarts", number(t.restarts)}},
                     cols, color)};
}

std::vector<std::string> spark_lines(const TopModel& m, int cols, bool color) {
  constexpr int kLabel = 6, kValue = 9;
  const int width = std::max(0, cols - kLabel - kValue);
  std::vector<std::optional<double>> requests, p99;
  for (const Point& p : m.history) {
    requests.emplace_back(p.requests_per_s);
    p99.push_back(p.p99_s);
  }
  auto line = [&](const char* label, const std::vector<std::optional<double>>& values,
                  const std::string& value, const char* style) {
    Line l(cols, color);
    l.add(fit(label, kLabel)).add(sparkline(values, width), style).add(fit(value, kValue, true));
    return std::move(l).str();
  };
  return {line("req/s", requests, rate(m.totals.requests_per_s), "36"),
          line("p99", p99, seconds(m.totals.p99_s), "35")};
}

std::string table_header(const Table& table, SortKey sort, int cols, bool color) {
  Line line(cols, color);
  auto title = [&](const char* text, bool sorted) {
    return sorted ? std::string(text) + "▼" : std::string(text);
  };
  line.add(std::string(kMarker, ' '), "1")
      .add(fit(title("ID", sort == SortKey::id), table.id_width), "1");
  for (const Column* c : table.columns) {
    line.add(" ", "1").add(fit(title(c->title, c->sorts == sort), c->width, c->right), "1");
  }
  return std::move(line).str();
}

std::string worker_line(const Worker& w, const Table& table, bool selected, int cols, bool color) {
  Line line(cols, color);
  const std::string base = selected ? "7" : "";
  auto style = [&](const std::string& own) {
    return own.empty() ? base : base.empty() ? own : base + ";" + own;
  };
  line.add(selected ? "> " : "  ", base).add(fit(w.id, table.id_width), style(""));
  for (const Column* c : table.columns) {
    line.add(" ", base).add(fit(c->text(w), c->width, c->right),
                            style(c->style ? c->style(w) : ""));
  }
  if (selected) line.fill(base);
  return std::move(line).str();
}

std::string exit_text(const LastExit& e, double now) {
  std::string what = e.reason;
  if (e.signal) what += fmt::format(" {}", *e.signal);
  if (e.code) what += fmt::format(" code {}", *e.code);
  return fmt::format("last exit: {}, {} ago", what, age(now - e.time));
}

std::string log_title(const Worker& w, double now, int cols, bool color) {
  std::string text = "── log " + w.id;
  if (w.pid) text += fmt::format(" · pid {}", *w.pid);
  if (w.last_exit) text += " · " + exit_text(*w.last_exit, now);
  Line line(cols, color);
  line.add(text + " ", "1");
  std::string rule;
  for (int i = 0; i < line.room(); ++i) rule += "─";
  return std::move(line.add(rule, "2")).str();
}

std::string status_line(const TopModel& m, SortKey sort, int cols, bool color) {
  Line line(cols, color);
  if (!m.status.empty()) line.add(m.status + "  ", "7;1");
  line.add(fmt::format("j/k select  s sort: {}  r reload  q quit", sort_name(sort)), "7");
  return std::move(line.fill("7")).str();
}

}  // namespace

std::string_view sort_name(SortKey key) {
  switch (key) {
    case SortKey::id:
      return "id";
    case SortKey::cpu:
      return "cpu";
    case SortKey::rss:
      return "rss";
    case SortKey::tasks_per_s:
      return "tasks/s";
    case SortKey::p99:
      return "p99";
    case SortKey::restarts:
      return "restarts";
  }
  return "id";
}

SortKey next_sort(SortKey key) {
  return key == SortKey::restarts ? SortKey::id : static_cast<SortKey>(static_cast<int>(key) + 1);
}

namespace {

// Natural order: digit runs compare as numbers.
bool id_less(std::string_view a, std::string_view b) {
  std::size_t i = 0, j = 0;
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  while (i < a.size() && j < b.size()) {
    if (digit(a[i]) && digit(b[j])) {
      const std::size_t i0 = i, j0 = j;
      while (i < a.size() && digit(a[i])) ++i;
      while (j < b.size() && digit(b[j])) ++j;
      const std::string_view x = a.substr(i0, i - i0), y = b.substr(j0, j - j0);
      const std::string_view xs = x.substr(std::min(x.find_first_not_of('0'), x.size()));
      const std::string_view ys = y.substr(std::min(y.find_first_not_of('0'), y.size()));
      if (xs.size() != ys.size()) return xs.size() < ys.size();
      if (xs != ys) return xs < ys;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i, ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

std::optional<double> figure(const Worker& w, SortKey key) {
  switch (key) {
    case SortKey::id:
      return std::nullopt;
    case SortKey::cpu:
      return w.cpu_percent;
    case SortKey::rss:
      return w.rss_bytes ? std::optional<double>(static_cast<double>(*w.rss_bytes)) : std::nullopt;
    case SortKey::tasks_per_s:
      return w.tasks_per_s;
    case SortKey::p99:
      return w.p99_s;
    case SortKey::restarts:
      return static_cast<double>(w.restarts);
  }
  return std::nullopt;
}

}  // namespace

std::vector<const Worker*> sorted_workers(const TopModel& model, SortKey key) {
  std::vector<const Worker*> rows;
  for (const Worker& w : model.workers) rows.push_back(&w);
  std::stable_sort(rows.begin(), rows.end(), [key](const Worker* a, const Worker* b) {
    const auto x = figure(*a, key), y = figure(*b, key);
    if (x.has_value() != y.has_value()) return x.has_value();
    if (x && *x != *y) return *x > *y;
    return id_less(a->id, b->id);
  });
  return rows;
}

std::string move_selection(const TopModel& model, SortKey key, const std::string& selected,
                           int delta) {
  const auto rows = sorted_workers(model, key);
  if (rows.empty()) return {};
  const auto it =
      std::find_if(rows.begin(), rows.end(), [&](const Worker* w) { return w->id == selected; });
  const long at = it == rows.end() ? 0 : it - rows.begin() + delta;
  return rows[static_cast<std::size_t>(std::clamp(at, 0L, static_cast<long>(rows.size()) - 1))]->id;
}

std::string sparkline(const std::vector<std::optional<double>>& values, int width) {
  static constexpr std::array<const char*, 8> kBlocks = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  if (width <= 0) return {};
  const std::size_t n = std::min(values.size(), static_cast<std::size_t>(width));
  const auto shown = std::vector<std::optional<double>>(
      values.end() - static_cast<std::ptrdiff_t>(n), values.end());
  double top = 0;
  for (const auto& v : shown) top = std::max(top, v.value_or(0));
  std::string out(static_cast<std::size_t>(width) - n, ' ');
  for (const auto& v : shown) {
    if (!v) {
      out += ' ';
      continue;
    }
    // The largest value gets the full block; any value above 0 at least the second block, so
    // that a little traffic never looks like none.
    const int level =
        *v <= 0 || top <= 0 ? 0 : std::clamp(static_cast<int>(std::ceil(*v / top * 7)), 1, 7);
    out += kBlocks[static_cast<std::size_t>(level)];
  }
  return out;
}

std::string render(const TopModel& model, Size size, const RenderOptions& options) {
  const int cols = std::max(1, size.cols);
  const bool color = options.color;
  const auto rows = sorted_workers(model, options.sort);
  const auto found = std::find_if(rows.begin(), rows.end(),
                                  [&](const Worker* w) { return w->id == options.selected; });
  const std::size_t selected =
      found == rows.end() ? 0 : static_cast<std::size_t>(found - rows.begin());
  const Worker* focus = rows.empty() ? nullptr : rows[selected];
  const Table table = layout(rows, cols);

  // Small terminals drop the sparklines (below 14 lines), then the totals (below 8).
  const bool unbounded = size.rows <= 0;
  const bool sparks = unbounded || size.rows >= 14;
  const bool totals = unbounded || size.rows >= 8;
  std::vector<std::string> lines = {header_line(model, cols, color)};
  if (totals) {
    for (auto& l : totals_lines(model, cols, color)) lines.push_back(std::move(l));
  }
  if (sparks) {
    for (auto& l : spark_lines(model, cols, color)) lines.push_back(std::move(l));
  }
  lines.push_back(table_header(table, options.sort, cols, color));

  // The body below the table header: worker rows first, the log gets what is left but at least
  // half of the body when it has that much to show.
  const std::size_t log_need = focus == nullptr ? 0 : 1 + focus->log.size();
  const std::size_t body =
      unbounded
          ? rows.size() + log_need
          : static_cast<std::size_t>(std::max(0, size.rows - static_cast<int>(lines.size()) - 1));
  const std::size_t shown =
      unbounded ? rows.size() : std::min(rows.size(), body - std::min(log_need, body / 2));
  // Scrolled so that the selected row is on screen.
  const std::size_t first = selected < shown ? 0 : selected + 1 - shown;
  for (std::size_t i = first; i < first + shown; ++i) {
    lines.push_back(worker_line(*rows[i], table, i == selected, cols, color));
  }
  const std::size_t log_room = body - shown;
  if (focus != nullptr && log_room > 0) {
    lines.push_back(log_title(*focus, model.time, cols, color));
    const std::size_t tail = std::min(focus->log.size(), log_room - 1);
    for (auto it = focus->log.end() - static_cast<std::ptrdiff_t>(tail); it != focus->log.end();
         ++it) {
      lines.push_back(std::move(Line(cols, color).add(printable(*it))).str());
    }
  }
  if (!unbounded) {
    // The status bar on the last line; on a very short terminal the lines above it go.
    lines.resize(static_cast<std::size_t>(std::max(0, size.rows - 1)));
    lines.push_back(status_line(model, options.sort, cols, color));
  }

  std::string frame;
  for (std::size_t i = 0; i < lines.size(); ++i) frame += (i == 0 ? "" : "\n") + lines[i];
  return frame;
}

}  // namespace crew::tool::top
