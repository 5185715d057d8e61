// crew top: the frame, a pure function of the model, the terminal's size and the view's options,
// so that every frame can be tested as text.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model.hpp"

namespace crew::tool::top {

struct Size {
  int cols = 80;
  int rows = 24;  ///< 0: as many lines as the content needs, for scripts (--once)
};

/// The worker table's order (`s` cycles through them): by id, else the largest first.
enum class SortKey { id, cpu, rss, tasks_per_s, p99, restarts };

std::string_view sort_name(SortKey key);
SortKey next_sort(SortKey key);

struct RenderOptions {
  bool color = false;    ///< ANSI colours (SGR); none at all when false
  std::string selected;  ///< the selected worker's id; empty or unknown: the first row
  SortKey sort = SortKey::id;
};

/// The workers in table order: by `key`, missing figures last, then by id (numbers inside ids
/// compare as numbers, so crew-proc-2 comes before crew-proc-10).
std::vector<const Worker*> sorted_workers(const TopModel& model, SortKey key);

/// The id `delta` rows below (negative: above) `selected` in table order, kept within the table;
/// empty when there are no workers.
std::string move_selection(const TopModel& model, SortKey key, const std::string& selected,
                           int delta);

/// `values` as `width` block characters, the newest rightmost; scaled to the largest value shown
/// (full block), 0 as the lowest block, a missing value as a space. Fewer values than `width`:
/// padded with spaces on the left.
std::string sparkline(const std::vector<std::optional<double>>& values, int width);

/// The whole frame: lines separated by '\n' (no trailing one), each at most `size.cols` columns,
/// exactly `size.rows` lines with the status bar (keys, the model's status) last; rows 0: every
/// worker and log line, no status bar. SGR codes only when `options.color`.
std::string render(const TopModel& model, Size size, const RenderOptions& options);

}  // namespace crew::tool::top
