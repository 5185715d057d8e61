// MetricsEndpoint: Beast on one io_context thread. Each connection gets one request, with a
// deadline for the whole exchange, so a client that connects and stalls costs only its socket.
#include "metrics_http.hpp"

#include <chrono>
#include <exception>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>

namespace crew::tool {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr auto kExchangeDeadline = std::chrono::seconds(10);

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, const MetricsEndpoint::Render& render)
      : stream_(std::move(socket)), render_(render) {
    parser_.header_limit(8 * 1024);
    parser_.body_limit(0);
  }

  void start() {
    stream_.expires_after(kExchangeDeadline);
    http::async_read(stream_, buffer_, parser_,
                     [self = shared_from_this()](beast::error_code ec, std::size_t) {
                       if (!ec) self->respond();
                     });
  }

 private:
  void respond() {
    const auto& request = parser_.get();
    response_.version(request.version());
    response_.keep_alive(false);
    response_.set(http::field::content_type, "text/plain; charset=utf-8");
    if (request.method() != http::verb::get) {
      reply(http::status::method_not_allowed, "only GET is served here\n");
      response_.set(http::field::allow, "GET");
    } else if (request.target() == "/healthz") {
      reply(http::status::ok, "ok\n");
    } else if (request.target() == "/metrics") {
      try {
        reply(http::status::ok, render_());
        response_.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      } catch (const std::exception& e) {
        reply(http::status::service_unavailable,
              fmt::format("metrics unavailable: {}\n", e.what()));
      }
    } else {
      reply(http::status::not_found, "not found: GET /metrics or /healthz\n");
    }
    response_.prepare_payload();
    http::async_write(stream_, response_,
                      [self = shared_from_this()](beast::error_code, std::size_t) {
                        beast::error_code ignored;
                        self->stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
                      });
  }

  void reply(http::status status, std::string body) {
    response_.result(status);
    response_.body() = std::move(body);
  }

  beast::tcp_stream stream_;
  const MetricsEndpoint::Render& render_;
  beast::flat_buffer buffer_;
  http::request_parser<http::empty_body> parser_;
  http::response<http::string_body> response_;
};

}  // namespace

struct MetricsEndpoint::Impl {
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  Render render;
  std::uint16_t port = 0;
  std::thread thread;

  void accept() {
    acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) std::make_shared<Session>(std::move(socket), render)->start();
      accept();
    });
  }
};

MetricsEndpoint::MetricsEndpoint(const std::string& host, std::uint16_t port, Render render)
    : impl_(std::make_unique<Impl>()) {
  impl_->render = std::move(render);
  beast::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) {
    throw std::system_error(ec, fmt::format("metrics: '{}' is not an IP address", host));
  }
  const tcp::endpoint endpoint(address, port);
  auto& acceptor = impl_->acceptor;
  acceptor.open(endpoint.protocol());
  acceptor.set_option(asio::socket_base::reuse_address(true));
  acceptor.bind(endpoint, ec);
  if (ec) throw std::system_error(ec, fmt::format("metrics: cannot listen on {}:{}", host, port));
  acceptor.listen();
  impl_->port = acceptor.local_endpoint().port();
  impl_->accept();
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

MetricsEndpoint::~MetricsEndpoint() {
  impl_->io.stop();
  impl_->thread.join();
}

std::uint16_t MetricsEndpoint::port() const noexcept {
  return impl_->port;
}

}  // namespace crew::tool
