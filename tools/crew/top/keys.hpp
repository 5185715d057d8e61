// crew top: the keys read from the terminal, decoded from raw input bytes.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace crew::tool::top {

enum class Key { up, down, sort, reload, quit };

/// The keys in `input`: arrows (ESC [ A/B, ESC O A/B), j/k, s, r, q and Ctrl-C; anything else is
/// skipped. `pending` carries an escape sequence cut between two reads into the next call.
std::vector<Key> decode_keys(std::string_view input, std::string& pending);

}  // namespace crew::tool::top
