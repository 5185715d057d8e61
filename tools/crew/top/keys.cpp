#include "keys.hpp"

namespace crew::tool::top {

std::vector<Key> decode_keys(std::string_view input, std::string& pending) {
  std::string bytes = pending + std::string(input);
  pending.clear();
  std::vector<Key> keys;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (c == '\x1b') {
      if (i + 2 >= bytes.size()) {
        // A lone ESC (its key) or the start of a sequence the next read completes.
        if (i + 1 < bytes.size() && bytes[i + 1] != '[' && bytes[i + 1] != 'O') continue;
        pending = bytes.substr(i);
        break;
      }
      if (bytes[i + 1] == '[' || bytes[i + 1] == 'O') {
        if (bytes[i + 2] == 'A') keys.push_back(Key::up);
        if (bytes[i + 2] == 'B') keys.push_back(Key::down);
        i += 2;
      }
      continue;
    }
    switch (c) {
      case 'k':
        keys.push_back(Key::up);
        break;
      case 'j':
        keys.push_back(Key::down);
        break;
      case 's':
        keys.push_back(Key::sort);
        break;
      case 'r':
        keys.push_back(Key::reload);
        break;
      case 'q':
      case '\x03':
        keys.push_back(Key::quit);
        break;
      default:
        break;
    }
  }
  return keys;
}

}  // namespace crew::tool::top
