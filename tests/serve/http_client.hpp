// tests/serve: a blocking HTTP/1.1 client for a `crew serve` on 127.0.0.1, one connection each.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>  // before Boost.Asio 1.74, whose awaitable.hpp forgets it
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <poll.h>

namespace crew_test {

namespace http_client_detail {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

struct Reply {
  int status = 0;
  std::string body;
  http::response<http::string_body> raw;
  json js() const { return json::parse(body); }
};

// A socket whose blocking reads give up after a time limit (none by default). SO_RCVTIMEO
// cannot do it: Asio's blocking read treats the timeout's EAGAIN as "not ready yet" and polls
// again without one.
class TimedReads {
 public:
  explicit TimedReads(tcp::socket& socket) : socket_(socket) {}
  void limit(std::chrono::milliseconds limit) { limit_ = limit; }
  template <class Buffers>
  std::size_t read_some(const Buffers& buffers, beast::error_code& ec) {
    pollfd p{.fd = socket_.native_handle(), .events = POLLIN, .revents = 0};
    const int ready = ::poll(&p, 1, static_cast<int>(limit_.count()));
    if (ready == 0) {
      ec = asio::error::timed_out;
      return 0;
    }
    return socket_.read_some(buffers, ec);
  }
  template <class Buffers>
  std::size_t read_some(const Buffers& buffers) {
    beast::error_code ec;
    const std::size_t n = read_some(buffers, ec);
    if (ec) throw beast::system_error(ec);
    return n;
  }

 private:
  tcp::socket& socket_;
  std::chrono::milliseconds limit_{-1};
};

class Client {
 public:
  explicit Client(std::uint16_t port) : socket_(ioc_), reads_(socket_) {
    socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  }
  Reply request(http::verb verb, const std::string& target, const std::string& body = "",
                const std::string& type = "application/json",
                std::vector<std::pair<std::string, std::string>> headers = {}) {
    http::request<http::string_body> req(verb, target, 11);
    req.set(http::field::host, "127.0.0.1");
    if (!body.empty()) req.set(http::field::content_type, type);
    for (auto& [k, v] : headers) req.set(k, v);
    req.body() = body;
    req.prepare_payload();
    http::write(socket_, req);
    return read();
  }
  Reply read() {
    Reply r;
    beast::flat_buffer buffer;
    http::read(reads_, buffer, r.raw);
    r.status = static_cast<int>(r.raw.result_int());
    r.body = r.raw.body();
    return r;
  }
  void send_raw(const std::string& bytes) { asio::write(socket_, asio::buffer(bytes)); }
  // A read that waits longer fails (the test then fails instead of hanging until CTest's guard).
  void read_timeout(std::chrono::seconds limit) { reads_.limit(limit); }
  // Reads what has come, waiting at most the read timeout; ec says why nothing came.
  std::size_t read_some(char* into, std::size_t size, beast::error_code& ec) {
    return reads_.read_some(asio::buffer(into, size), ec);
  }
  // True when the server closed the connection (read returns EOF or reset).
  bool closed_by_server() {
    char c;
    beast::error_code ec;
    reads_.read_some(asio::buffer(&c, 1), ec);
    return ec == asio::error::eof || ec == asio::error::connection_reset;
  }

 private:
  asio::io_context ioc_;
  tcp::socket socket_;
  TimedReads reads_;
};

}  // namespace http_client_detail

using http_client_detail::Client;
using http_client_detail::Reply;

}  // namespace crew_test
