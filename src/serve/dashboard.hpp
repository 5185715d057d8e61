// The dashboard's page and its assets (src/serve/dashboard/, uPlot from third_party/uplot/),
// embedded into the binary at build time by cmake/CrewEmbedAssets.cmake: `crew serve` serves them
// under /dashboard/ without reading any file at run time.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace crew::serve_app {

/// One embedded file. The views point into static storage: valid for the program's lifetime.
struct Asset {
  std::string_view body;
  const char* content_type;
  std::string_view etag;  ///< a strong ETag, quoted: from the file's SHA-256 at build time
};

/// The asset served at /dashboard/<path> (`path` without the prefix; "" and "index.html" are the
/// page itself), or nullopt for any other path.
std::optional<Asset> dashboard_asset(std::string_view path);

/// Whether an If-None-Match header names `etag` (or is "*"): the client's copy is current. Weak
/// validators (W/"...") match too, as RFC 9110 asks for If-None-Match.
bool etag_matches(std::string_view if_none_match, std::string_view etag);

namespace embedded {
struct EmbeddedAsset {
  std::string_view name;
  const char* content_type;
  std::string_view etag;
  std::string_view body;
};
// Defined in the generated dashboard_assets.cpp.
extern const EmbeddedAsset kDashboardAssets[];
extern const std::size_t kDashboardAssetCount;
}  // namespace embedded

}  // namespace crew::serve_app
