// crew — the Node.js concurrency toolbox for C++20. This umbrella header brings in every public
// header of crew::core.
#pragma once

#include <crew/atomics.hpp>
#include <crew/broadcast.hpp>
#include <crew/buffer.hpp>
#include <crew/channel.hpp>
#include <crew/errors.hpp>
#include <crew/event_loop.hpp>
#include <crew/future.hpp>
#include <crew/message.hpp>
#include <crew/parallel.hpp>
#include <crew/pool.hpp>
#include <crew/port.hpp>
#include <crew/shared_buffer.hpp>
#include <crew/stats.hpp>
#include <crew/version.hpp>
#include <crew/worker.hpp>
