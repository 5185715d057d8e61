#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include <crew/broadcast.hpp>
#include <crew/errors.hpp>

namespace crew::inline v0 {
namespace detail {

struct BroadcastEntry {
  MessagePort sender;  // posters push into the subscriber through this end
  const BroadcastChannel* owner = nullptr;
};

namespace {
// Name -> live subscribers. Never destroyed: channels may close during static destruction.
struct Registry {
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<std::shared_ptr<BroadcastEntry>>> by_name;
};
Registry& registry() {
  static auto* r = new Registry();
  return *r;
}
}  // namespace
}  // namespace detail

BroadcastChannel::BroadcastChannel(std::string name, PortOptions options) : name_(std::move(name)) {
  if (name_.empty()) {
    throw std::invalid_argument("crew::BroadcastChannel: the name must not be empty");
  }
  MessageChannel channel(options);
  inbox_ = std::move(channel.port2);
  entry_ = std::make_shared<detail::BroadcastEntry>();
  entry_->sender = std::move(channel.port1);
  entry_->owner = this;
  auto& r = detail::registry();
  std::lock_guard lock(r.mutex);
  r.by_name[name_].push_back(entry_);
}

BroadcastChannel::~BroadcastChannel() {
  close();
}

void BroadcastChannel::close() {
  if (!entry_) return;
  {
    auto& r = detail::registry();
    std::lock_guard lock(r.mutex);
    auto it = r.by_name.find(name_);
    if (it != r.by_name.end()) {
      std::erase(it->second, entry_);
      if (it->second.empty()) r.by_name.erase(it);
    }
  }
  // Closing the sender end lets this subscriber drain what already arrived, then see the end.
  entry_->sender.close();
  entry_.reset();
}

std::size_t BroadcastChannel::post(const Message& message) {
  if (!entry_) {
    throw std::logic_error(fmt::format(
        "crew::BroadcastChannel '{}': post() after close(); create a new channel to post again",
        name_));
  }
  std::vector<std::shared_ptr<detail::BroadcastEntry>> targets;
  {
    auto& r = detail::registry();
    std::lock_guard lock(r.mutex);
    auto it = r.by_name.find(name_);
    if (it != r.by_name.end()) targets = it->second;
  }
  std::size_t delivered = 0;
  for (auto& t : targets) {
    if (t->owner == this) continue;
    // clone() throws BadArguments naming the Buffer or port it cannot copy.
    if (t->sender.post(message.clone())) ++delivered;
  }
  return delivered;
}

}  // namespace crew::inline v0
