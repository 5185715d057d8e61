// A small HTTP endpoint for commands that are not HTTP servers themselves (`crew worker`):
// GET /metrics and GET /healthz, answered on a thread of its own.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace crew::tool {

class MetricsEndpoint {
 public:
  /// Renders the Prometheus text of one scrape; called on the endpoint's thread.
  using Render = std::function<std::string()>;

  /// Listens on host:port (0: any free port); throws std::system_error naming the address.
  MetricsEndpoint(const std::string& host, std::uint16_t port, Render render);
  /// Stops listening and closes every connection.
  ~MetricsEndpoint();
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  [[nodiscard]] std::uint16_t port() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace crew::tool
