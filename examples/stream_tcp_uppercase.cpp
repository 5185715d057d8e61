// A TCP server whose connections are Duplex streams: each one is piped through the uppercase
// Transform straight back to the client,
//
//     conn.readable() | uppercase() | conn.writable()
//
// (Node: net.createServer(s => s.pipe(upper).pipe(s))). The server listens on 127.0.0.1 port 0;
// the program then connects three clients at once, each sending its own text through a
// pipeline and reading the echo through another, checks every echo, and exits 0. Pipelines that
// read from a socket start no thread: they run on crew's I/O executor (or an io_context given to
// the Listener), so the server costs no thread per connection.

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <crew/stream.hpp>
#include <crew/stream/net.hpp>

namespace cs = crew::stream;

namespace {

std::string upper(std::string s) {
  for (char& c : s) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return s;
}

}  // namespace

int main() {
  crew::net::Listener listener({.address = "127.0.0.1", .port = 0});
  std::printf("listening on 127.0.0.1:%u\n", static_cast<unsigned>(listener.port()));

  // The server: one pipeline per connection, on the connection's executor. A Pipeline object
  // reading from a socket may be dropped while it runs; its Future still settles.
  std::jthread server([&listener] {
    std::vector<crew::Future<cs::Summary>> done;
    while (auto conn = listener.accept()) {
      auto p = conn->readable() | cs::uppercase() | conn->writable();
      done.push_back(p.run());
    }
    for (auto& f : done) {
      try {
        const cs::Summary s = f.get();
        std::printf("server: connection done, %llu bytes echoed\n",
                    static_cast<unsigned long long>(s.stage("net.write").bytes_in));
      } catch (const std::exception& e) {
        std::printf("server: connection failed: %s\n", e.what());
      }
    }
  });

  bool ok = true;
  {
    struct Client {
      std::string text;
      crew::net::Connection conn;
      cs::Pipeline<void> send;
      cs::Pipeline<std::vector<crew::Buffer>> receive;
    };
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < 3; ++i) {
      std::string text;
      for (int line = 0; line < 2000; ++line) {
        text += "client " + std::to_string(i) + " line " + std::to_string(line) +
                ": hello, streams over tcp\n";
      }
      auto conn = crew::net::Connection::connect("127.0.0.1", listener.port());
      std::vector<crew::Buffer> chunks;
      for (std::size_t at = 0; at < text.size(); at += 4096) {
        chunks.push_back(crew::Buffer::copy_of(std::string_view(text).substr(at, 4096)));
      }
      auto send = cs::from(std::move(chunks)) | conn.writable();
      auto receive = conn.readable() | cs::collect();
      clients.push_back(std::unique_ptr<Client>(
          new Client{std::move(text), std::move(conn), std::move(send), std::move(receive)}));
    }
    std::vector<crew::Future<cs::Summary>> sends, receives;
    for (auto& c : clients) {
      sends.push_back(c->send.run());
      receives.push_back(c->receive.run());
    }
    for (std::size_t i = 0; i < clients.size(); ++i) {
      try {
        (void)sends[i].get();
        (void)receives[i].get();
        std::string echoed;
        for (const crew::Buffer& b : clients[i]->receive.take()) echoed += b.view();
        const bool same = echoed == upper(clients[i]->text);
        std::printf("client %zu: sent %zu bytes, echo %s\n", i, clients[i]->text.size(),
                    same ? "upper-cased and complete" : "WRONG");
        ok = ok && same;
      } catch (const std::exception& e) {
        std::printf("client %zu failed: %s\n", i, e.what());
        ok = false;
      }
    }
  }
  listener.close();
  server.join();
  if (!ok) {
    std::fprintf(stderr, "FAILED: an echo was wrong\n");
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
