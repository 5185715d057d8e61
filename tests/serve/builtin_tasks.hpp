// tests/serve: crew serve's built-in tasks, registered once per test program.
#pragma once

#include "tasks.hpp"

namespace crew_test {

inline const crew::Tasks& builtin_tasks() {
  static const crew::Tasks t = [] {
    crew::Tasks x;
    crew::serve_app::add_builtin_tasks(x);
    return x;
  }();
  return t;
}

}  // namespace crew_test
