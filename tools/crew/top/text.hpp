// crew top: text for the terminal: widths in columns, cutting, padding, the numbers' formats, and
// a line builder that adds colour only when asked.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace crew::tool::top {

/// Columns `s` takes on the terminal: one per UTF-8 code point. East Asian wide characters in a
/// worker's log would take two; the terminal loop turns line wrapping off, so such a line is cut
/// at the screen's edge instead of breaking the layout.
int columns(std::string_view s);

/// `s` in `width` columns: cut with "…", or padded with spaces (on the left when `right`).
std::string fit(std::string_view s, int width, bool right = false);

/// A worker's log line as inert text: control characters, C0 and C1 (escape sequences above all,
/// which would drive the terminal), become '?', tabs a space.
std::string printable(std::string_view s);

/// "-": a figure that is not known.
std::string dash();

/// Figures: "-" when not known; rates "12.5" (k above 10 000); durations "950µs", "9.0ms",
/// "1.25s"; bytes in binary units "7.6M"; ages "5s", "1m05s", "1h02m", "3d04h".
std::string rate(std::optional<double> v);
std::string seconds(std::optional<double> v);
std::string bytes(std::optional<std::uint64_t> v);
std::string number(std::optional<std::uint64_t> v);
std::string age(double s);

/// One line of the frame, built left to right and cut (with "…") where the frame ends.
class Line {
 public:
  Line(int width, bool color) : width_(width), color_(color) {}

  /// `style`: SGR parameters ("1", "7;33"); empty for none. Ignored without colour.
  Line& add(std::string_view text, std::string_view style = {});
  /// Spaces to the frame's edge, so that a background style spans the whole line (without
  /// colour there is no background to show).
  Line& fill(std::string_view style);
  int room() const { return width_ - used_; }
  std::string str() && { return std::move(out_); }

 private:
  int width_;
  bool color_;
  int used_ = 0;
  std::string out_;
};

}  // namespace crew::tool::top
