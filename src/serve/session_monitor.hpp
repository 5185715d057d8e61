// The Session's monitor routes: ?seq= and the other query numbers, a kept sample, and the
// GET /api/events stream.
#pragma once

#include <algorithm>
#include <charconv>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "session.hpp"

namespace crew::serve_app {

// ?key=N: false (and answered 400) when present but not a whole number.
template <class Executor, bool Tls>
bool Session<Executor, Tls>::number_param(std::string_view key, std::optional<std::uint64_t>& out) {
  const std::string text = query_param(query_, key);
  if (text.empty()) return true;
  std::uint64_t n = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || end != text.data() + text.size()) {
    respond(
        http::status::bad_request,
        error_body("BadRequest", fmt::format("?{}= must be a whole number, not '{}'", key, text)));
    return false;
  }
  out = n;
  return true;
}

// The snapshots behind sample `seq`; none (and answered 404) once they are no longer kept.
template <class Executor, bool Tls>
std::optional<std::vector<json>> Session<Executor, Tls>::kept_sample(std::uint64_t seq) {
  auto kept = server_.monitor.snapshots(seq);
  if (!kept) {
    respond(
        http::status::not_found,
        error_body("NotFound", fmt::format("sample {} is not kept: the last {} samples are (see "
                                           "GET /api/monitor for the newest seq)",
                                           seq, Monitor::kKeptSnapshots)));
  }
  return kept;
}

// GET /api/events: the response has no length; it is the stream of samples until either side
// closes. The request is done once its head is out, so a drain does not wait for the stream.
template <class Executor, bool Tls>
void Session<Executor, Tls>::open_stream() {
  std::optional<std::uint64_t> since, history;
  if (!number_param("since", since) || !number_param("history", history)) return;
  const std::string_view last_id = std_view(request_["Last-Event-ID"]);
  std::uint64_t last = 0;
  if (!last_id.empty() &&
      std::from_chars(last_id.data(), last_id.data() + last_id.size(), last).ec == std::errc()) {
    since = last;
  }
  std::string head =
      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
      "X-Accel-Buffering: no\r\nConnection: close\r\n\r\n";
  head += server_.monitor.stream_start(
      since, std::min<std::uint64_t>(history.value_or(Monitor::kHistory), Monitor::kHistory));
  log(200, head.size());
  done_request();
  streaming_ = true;
  server_.add_sink(this, this->weak_from_this());
  send_event(std::make_shared<const std::string>(std::move(head)));
}

template <class Executor, bool Tls>
void Session<Executor, Tls>::post_event(std::shared_ptr<const std::string> event) {
  asio::post(stream_.get_executor(),
             [self = shared_from_this(), event = std::move(event)] { self->on_event(event); });
}

// A client that reads slower than samples come keeps one waiting: a newer one replaces it.
template <class Executor, bool Tls>
void Session<Executor, Tls>::on_event(const std::shared_ptr<const std::string>& event) {
  if (!streaming_) return;
  if (writing_) {
    pending_ = event;
    return;
  }
  send_event(event);
}

template <class Executor, bool Tls>
void Session<Executor, Tls>::send_event(std::shared_ptr<const std::string> event) {
  writing_ = std::move(event);
  arm_deadline(kStreamWriteTimeout);  // a client that stops reading is let go
  asio::async_write(stream_, asio::buffer(*writing_),
                    [self = shared_from_this()](beast::error_code ec, std::size_t) {
                      self->clear_deadline();
                      if (self->timed_out_) ec = beast::error::timeout;
                      self->writing_.reset();
                      if (ec) return self->end_stream();
                      if (self->pending_) self->send_event(std::exchange(self->pending_, {}));
                    });
}

template <class Executor, bool Tls>
void Session<Executor, Tls>::end_stream() {
  if (!streaming_) return;
  streaming_ = false;
  pending_.reset();
  server_.remove_sink(this);
  close();
}

}  // namespace crew::serve_app
