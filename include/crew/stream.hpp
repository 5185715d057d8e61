// crew::stream — typed pipelines with backpressure, byte streams of crew::Buffer chunks, codec
// stages, and TCP connections as Duplex streams (crew::net). This umbrella header brings in every
// public header of the crew::stream target.
#pragma once

#include <crew/stream/bytes.hpp>
#include <crew/stream/codec.hpp>
#include <crew/stream/coding.hpp>
#include <crew/stream/error.hpp>
#include <crew/stream/flow.hpp>
#include <crew/stream/net.hpp>
#include <crew/stream/stages.hpp>
#include <crew/stream/summary.hpp>
