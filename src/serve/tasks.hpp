// The tasks `crew serve` offers: the built-in ones and those from plugins.
#pragma once

#include <string>
#include <vector>

#include <crew/process/tasks.hpp>

namespace crew::serve_app {

/// fib (n in 0..92), sum_range (n >= 0), count_primes (n in 0..1e8), sort_numbers and sha256
/// (bounded by the request body limit), sleep_ms (0..600000). Beyond its bounds a task throws
/// crew::BadArguments (400, in either isolation). sum_range, count_primes and sleep_ms return
/// early, with crew::Cancelled, once this_task::stop_requested() (thread isolation: the task's
/// timeout).
void add_builtin_tasks(Tasks& tasks);

/// The symbol a plugin exports: `extern "C" void crew_register_tasks(crew::Tasks&)`.
inline constexpr const char* kPluginSymbol = "crew_register_tasks";

/// Loads each plugin (a shared library) and lets it register its tasks. Throws crew::PluginError
/// naming the path and what went wrong (not found, no registration function, a task name already
/// taken).
void load_plugins(const std::vector<std::string>& paths, Tasks& tasks);

}  // namespace crew::serve_app
