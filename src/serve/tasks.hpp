// The tasks `crew serve` offers: the built-in ones and those from plugins.
#pragma once

#include <string>
#include <vector>

#include <crew/process/tasks.hpp>

namespace crew::serve_app {

/// fib, sum_range, count_primes, sort_numbers, sha256, sleep_ms.
void add_builtin_tasks(Tasks& tasks);

/// The symbol a plugin exports: `extern "C" void crew_register_tasks(crew::Tasks&)`.
inline constexpr const char* kPluginSymbol = "crew_register_tasks";

/// Loads each plugin (a shared library) and lets it register its tasks. Throws
/// std::runtime_error naming the path and what went wrong (not found, no registration function,
/// a task name already taken).
void load_plugins(const std::vector<std::string>& paths, Tasks& tasks);

}  // namespace crew::serve_app
