// crew::process — everything for running tasks in isolated worker processes.
#pragma once

#include <crew/crew.hpp>
#include <crew/process/errors.hpp>
#include <crew/process/pool.hpp>
#include <crew/process/tasks.hpp>
