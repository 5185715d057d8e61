// crew::stream::Summary — what a finished pipeline did, stage by stage.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace crew {
inline namespace v0 {
namespace stream {

/// Counters of one stage of a finished pipeline.
///
/// Thread safety: a plain value.
struct StageStats {
  /// "from", "map", "read_file", ... or the name given with `.named()`.
  std::string name;
  /// Position in the pipeline; the source is 0, the sink is last.
  std::size_t index = 0;
  /// Items the stage received (0 for the source) and handed on (0 for the sink).
  std::uint64_t items_in = 0;
  std::uint64_t items_out = 0;
  /// Bytes in those items, for crew::Buffer and std::string items (0 for other types).
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  /// Time spent in this stage's own code (not in the stages it handed items to).
  std::chrono::nanoseconds busy{0};
  /// Most items (bytes, for a byte stream) the stage held for its downstream boundary at once.
  /// At most `high_water_mark`, or one item when a single item is bigger than the mark.
  std::size_t peak_buffered = 0;
  /// The high-water mark of the boundary after this stage (0 for the sink).
  std::size_t high_water_mark = 0;
  /// True when `peak_buffered` and `high_water_mark` count bytes (a stream of crew::Buffer).
  bool counts_bytes = false;
  /// Parallel stages: most items (or jobs) running or finished-but-not-yet-handed-on at once.
  std::size_t peak_in_flight = 0;
  /// Stage-specific result, e.g. the hex digest of `sha256()`. Empty for most stages.
  std::string report;
};

/// What `Pipeline::run()` resolves to: one StageStats per stage (source first), and the total
/// wall time.
///
///     crew::stream::Summary s = pipeline.run().get();
///     std::cout << s.stage("sha256").report << '\n' << s.to_string();
///
/// Thread safety: a plain value.
struct Summary {
  std::vector<StageStats> stages;
  /// From the start of run() to the end of the sink.
  std::chrono::nanoseconds elapsed{0};

  /// The first stage with this name; throws std::out_of_range naming it when there is none.
  [[nodiscard]] const StageStats& stage(std::string_view name) const;
  /// The first stage with this name, or nullptr.
  [[nodiscard]] const StageStats* find(std::string_view name) const noexcept;
  /// Items the sink received.
  [[nodiscard]] std::uint64_t items() const noexcept {
    return stages.empty() ? 0 : stages.back().items_in;
  }
  /// A table, one line per stage, for logs and examples.
  [[nodiscard]] std::string to_string() const;
};

}  // namespace stream
}  // namespace v0
}  // namespace crew
