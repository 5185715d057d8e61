// crew::process — everything for running tasks in isolated worker processes, and clusters of
// server processes sharing one port.
#pragma once

#include <crew/crew.hpp>
#include <crew/process/cluster.hpp>
#include <crew/process/errors.hpp>
#include <crew/process/pool.hpp>
#include <crew/process/tasks.hpp>
