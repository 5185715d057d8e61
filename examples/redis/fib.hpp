// The task both sides of the example know by name.
#pragma once

#include <crew/process/tasks.hpp>

inline long fib(int n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

inline crew::Tasks example_tasks() {
  crew::Tasks tasks;
  tasks.add("fib", fib);
  return tasks;
}
