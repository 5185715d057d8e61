// crew::stream — typed pipelines with backpressure, byte streams of crew::Buffer chunks, and
// their stages. This umbrella header brings in every public header of the crew::stream target
// except <crew/net.hpp>.
#pragma once

#include <crew/stream/bytes.hpp>
#include <crew/stream/codec.hpp>
#include <crew/stream/coding.hpp>
#include <crew/stream/error.hpp>
#include <crew/stream/flow.hpp>
#include <crew/stream/stages.hpp>
#include <crew/stream/summary.hpp>
