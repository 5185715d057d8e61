#include "dashboard.hpp"

#include <span>

namespace crew::serve_app {

std::optional<Asset> dashboard_asset(std::string_view path) {
  if (path.empty()) path = "index.html";
  for (const auto& a : std::span(embedded::kDashboardAssets, embedded::kDashboardAssetCount)) {
    if (a.name == path) return Asset{a.body, a.content_type, a.etag};
  }
  return std::nullopt;
}

bool etag_matches(std::string_view if_none_match, std::string_view etag) {
  while (!if_none_match.empty()) {
    const auto comma = if_none_match.find(',');
    std::string_view tag = if_none_match.substr(0, comma);
    if_none_match = comma == std::string_view::npos ? "" : if_none_match.substr(comma + 1);
    const auto first = tag.find_first_not_of(" \t");
    if (first == std::string_view::npos) continue;
    tag = tag.substr(first, tag.find_last_not_of(" \t") - first + 1);
    if (tag.starts_with("W/")) tag.remove_prefix(2);
    if (tag == "*" || tag == etag) return true;
  }
  return false;
}

}  // namespace crew::serve_app
