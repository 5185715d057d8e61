// The simple transforms of crew pipe, as ChunkCodecs so they chain like the others.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <crew/stream/codec.hpp>

namespace crew::tool {

/// ASCII uppercase, one parallel job per input chunk (the seed's Transform example).
std::unique_ptr<stream::ChunkCodec> make_upper_codec();

/// Pass-through that computes the SHA-256 of the bytes flowing by (sequentially, in feed()) and
/// calls `report(hex digest)` from finish().
std::unique_ptr<stream::ChunkCodec> make_sha256_codec(
    std::function<void(const std::string&)> report);

}  // namespace crew::tool
