#include "client.hpp"

#include <stdexcept>
#include <type_traits>
#include <utility>  // before Boost.Asio 1.74, whose awaitable.hpp forgets it

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <fmt/format.h>
#include <openssl/ssl.h>

#include <crew/version.hpp>

namespace crew::tool::top {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

[[noreturn]] void bad_url(std::string_view text, std::string_view what) {
  throw std::invalid_argument(fmt::format(
      "URL '{}': {}; give the address of a `crew serve`, e.g. http://127.0.0.1:8080", text, what));
}

template <class Stream>
constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

// Resolve, connect, (handshake,) write, read: one chain of handlers run on `ioc` under one
// deadline for the whole.
template <class Stream>
Reply exchange(asio::io_context& ioc, Stream& stream, const Url& url,
               const http::request<http::string_body>& request) {
  tcp::resolver resolver(ioc);
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  beast::error_code failure;
  const char* stage = "looking up the host";
  auto fail = [&](beast::error_code ec, const char* what) {
    failure = ec;
    stage = what;
  };
  auto on_read = [&](beast::error_code ec, std::size_t) {
    if (ec) fail(ec, "reading the answer");
  };
  auto on_write = [&](beast::error_code ec, std::size_t) {
    if (ec) return fail(ec, "sending the request");
    http::async_read(stream, buffer, response, on_read);
  };
  auto on_connect = [&](beast::error_code ec, const tcp::endpoint&) {
    if (ec) return fail(ec, "connecting");
    if constexpr (kTls<Stream>) {
      stream.async_handshake(ssl::stream_base::client, [&](beast::error_code hs) {
        if (hs) return fail(hs, "the TLS handshake");
        http::async_write(stream, request, on_write);
      });
    } else {
      http::async_write(stream, request, on_write);
    }
  };
  resolver.async_resolve(url.host, url.port,
                         [&](beast::error_code ec, const tcp::resolver::results_type& results) {
                           if (ec) return fail(ec, "looking up the host");
                           beast::get_lowest_layer(stream).async_connect(results, on_connect);
                         });
  ioc.run_for(kRequestTimeout);
  if (!ioc.stopped()) {
    resolver.cancel();
    beast::get_lowest_layer(stream).close();
    ioc.run();
    throw std::runtime_error(
        fmt::format("{}: no answer within {} s ({})", url.text, kRequestTimeout.count(), stage));
  }
  if (failure) {
    std::string hint;
    if (failure == asio::error::connection_refused) {
      hint = "; is `crew serve` running there?";
    } else if (failure.category() == asio::error::get_ssl_category()) {
      hint = "; for a self-signed certificate give it with --cacert FILE";
    }
    throw std::runtime_error(
        fmt::format("{}: {} failed: {}{}", url.text, stage, failure.message(), hint));
  }
  return Reply{.status = static_cast<int>(response.result_int()),
               .reason = std::string(response.reason()),
               .body = std::move(response.body())};
}

}  // namespace

Url parse_url(std::string_view text) {
  while (text.ends_with('/')) text.remove_suffix(1);
  Url url;
  url.text = text;
  const auto scheme_end = text.find("://");
  if (scheme_end == std::string_view::npos) bad_url(text, "no scheme (http:// or https://)");
  url.scheme = text.substr(0, scheme_end);
  if (url.scheme != "http" && url.scheme != "https") {
    bad_url(text, fmt::format("scheme '{}' is not http or https", url.scheme));
  }
  std::string_view rest = text.substr(scheme_end + 3);
  const auto slash = rest.find('/');
  if (slash != std::string_view::npos) {
    url.base = rest.substr(slash);
    rest = rest.substr(0, slash);
  }
  if (url.base.find_first_of("?#") != std::string::npos) bad_url(text, "a query or fragment");
  std::string_view port;
  if (rest.starts_with('[')) {  // [IPv6]:port
    const auto close = rest.find(']');
    if (close == std::string_view::npos) bad_url(text, "an IPv6 address without its ']'");
    url.host = rest.substr(1, close - 1);
    const std::string_view after = rest.substr(close + 1);
    if (!after.empty() && !after.starts_with(':')) bad_url(text, "text after the ']'");
    if (!after.empty()) port = after.substr(1);
  } else {
    const auto colon = rest.rfind(':');
    url.host = rest.substr(0, colon);
    if (colon != std::string_view::npos) port = rest.substr(colon + 1);
  }
  if (url.host.empty()) bad_url(text, "no host");
  if (url.host.find('@') != std::string::npos) {
    bad_url(text, "credentials in the URL; give a token with --token-file or CREW_TOKEN");
  }
  if (port.empty()) port = url.scheme == "https" ? "443" : "80";
  if (port.find_first_not_of("0123456789") != std::string_view::npos || port.size() > 5 ||
      std::stoi(std::string(port)) == 0 || std::stoi(std::string(port)) > 65535) {
    bad_url(text, fmt::format("port '{}' is not a number from 1 to 65535", port));
  }
  url.port = port;
  return url;
}

Client::Client(Url url, std::string token, const std::string& ca_file)
    : url_(std::move(url)), token_(std::move(token)) {
  if (url_.scheme != "https") return;
  tls_ = std::make_unique<ssl::context>(ssl::context::tls_client);
  tls_->set_verify_mode(ssl::verify_peer);
  beast::error_code ec;
  if (ca_file.empty()) {
    tls_->set_default_verify_paths(ec);
  } else {
    tls_->load_verify_file(ca_file, ec);
  }
  if (ec) {
    throw std::invalid_argument(fmt::format("--cacert {}: cannot be loaded ({}); give a PEM file",
                                            ca_file.empty() ? "(system)" : ca_file, ec.message()));
  }
}

Client::~Client() = default;

Reply Client::get(std::string_view target) const {
  return request(false, target);
}
Reply Client::post(std::string_view target) const {
  return request(true, target);
}

Reply Client::request(bool post, std::string_view target) const {
  http::request<http::string_body> req(post ? http::verb::post : http::verb::get,
                                       url_.base + std::string(target), 11);
  req.set(http::field::host, url_.host.find(':') != std::string::npos
                                 ? fmt::format("[{}]:{}", url_.host, url_.port)
                                 : fmt::format("{}:{}", url_.host, url_.port));
  req.set(http::field::user_agent, "crew-top/" CREW_VERSION_STRING);
  req.set(http::field::connection, "close");
  if (!token_.empty()) req.set(http::field::authorization, "Bearer " + token_);
  req.prepare_payload();
  asio::io_context ioc;
  if (!tls_) {
    beast::tcp_stream stream(ioc);
    return exchange(ioc, stream, url_, req);
  }
  beast::ssl_stream<beast::tcp_stream> stream(ioc, *tls_);
  // SNI, and the certificate must name the host.
  if (SSL_set_tlsext_host_name(stream.native_handle(), url_.host.c_str()) != 1) {
    throw std::runtime_error(fmt::format("{}: cannot set the TLS server name", url_.text));
  }
  stream.set_verify_callback(ssl::host_name_verification(url_.host));
  return exchange(ioc, stream, url_, req);
}

}  // namespace crew::tool::top
