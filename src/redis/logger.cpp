#include "logger.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace crew::inline v0::redis {

std::shared_ptr<spdlog::logger> logger() {
  static const std::shared_ptr<spdlog::logger> kLogger = [] {
    auto existing = spdlog::get("crew.redis");
    return existing ? existing : spdlog::stderr_color_mt("crew.redis");
  }();
  return kLogger;
}

}  // namespace crew::inline v0::redis
