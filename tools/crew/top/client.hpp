// crew top: a blocking HTTP(S) client for the monitor API, one connection per request.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

namespace boost::asio::ssl {
class context;
}

namespace crew::tool::top {

/// scheme://host[:port][/base-path]; the base path is kept for a server behind a proxy prefix.
struct Url {
  std::string text;    ///< as given, without a trailing '/'
  std::string scheme;  ///< http or https
  std::string host;    ///< without brackets for IPv6
  std::string port;
  std::string base;  ///< "" or "/prefix"
};

/// Throws std::invalid_argument saying what is wrong and what a URL looks like.
Url parse_url(std::string_view text);

struct Reply {
  int status = 0;
  std::string reason;
  std::string body;
};

class Client {
 public:
  /// `token`: sent as a bearer token unless empty. `ca_file`: for https, the PEM certificates to
  /// trust instead of the system's. Throws std::invalid_argument for an unreadable `ca_file`.
  Client(Url url, std::string token, const std::string& ca_file = {});
  ~Client();

  /// GET or POST `target` (e.g. "/api/monitor?since=4") below the URL's base path. Throws
  /// std::runtime_error naming the URL when there is no answer within `timeout`.
  Reply get(std::string_view target) const;
  Reply post(std::string_view target) const;

  const Url& url() const { return url_; }

 private:
  Reply request(bool post, std::string_view target) const;

  Url url_;
  std::string token_;
  std::unique_ptr<boost::asio::ssl::context> tls_;
};

/// The whole exchange, connecting included: a stuck server must not freeze the view for longer.
inline constexpr auto kRequestTimeout = std::chrono::seconds(3);

}  // namespace crew::tool::top
