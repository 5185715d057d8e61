// crew::redis (internal): the spdlog logger "crew.redis" (stderr), created on first use.
#pragma once

#include <memory>

#include <spdlog/logger.h>

namespace crew::inline v0::redis {

std::shared_ptr<spdlog::logger> logger();

}  // namespace crew::inline v0::redis
