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
#include <sys/socket.h>
#include <sys/time.h>

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

class Client {
 public:
  explicit Client(std::uint16_t port) : socket_(ioc_) {
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
    http::read(socket_, buffer, r.raw);
    r.status = static_cast<int>(r.raw.result_int());
    r.body = r.raw.body();
    return r;
  }
  void send_raw(const std::string& bytes) { asio::write(socket_, asio::buffer(bytes)); }
  // A read that waits longer fails (the test then fails instead of hanging until CTest's guard).
  void read_timeout(std::chrono::seconds limit) {
    const timeval tv{.tv_sec = static_cast<time_t>(limit.count()), .tv_usec = 0};
    ::setsockopt(socket_.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  // True when the server closed the connection (read returns EOF or reset).
  bool closed_by_server() {
    char c;
    beast::error_code ec;
    socket_.read_some(asio::buffer(&c, 1), ec);
    return ec == asio::error::eof || ec == asio::error::connection_reset;
  }
  tcp::socket& socket() { return socket_; }

 private:
  asio::io_context ioc_;
  tcp::socket socket_;
};

}  // namespace http_client_detail

using http_client_detail::Client;
using http_client_detail::Reply;

}  // namespace crew_test
