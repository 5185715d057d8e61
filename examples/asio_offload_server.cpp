// An Asio coroutine server, one coroutine per connection, that stays responsive while CPU work
// runs: each request (a number n, one per line) is answered with fib(n) computed on a
// crew::ThreadPool through `co_await crew::async_run(...)`, so the io_context thread only does
// I/O. A ticker on the same io_context measures how late its 1 ms timer fires meanwhile.
//
// The example is its own client: it serves on a free loopback port, opens 8 connections that
// each ask for 6 numbers, checks every answer, prints the timer lag and exits (0 when all
// answers were right).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>  // before Boost.Asio 1.74, whose awaitable.hpp forgets it
#include <vector>

#include <boost/asio.hpp>

#include <crew/asio.hpp>

namespace net = boost::asio;
using net::ip::tcp;
using namespace std::chrono_literals;

namespace {

long fib(int n) {
  return n < 2 ? n : fib(n - 1) + fib(n - 2);
}

net::awaitable<void> serve_connection(tcp::socket socket, crew::ThreadPool& pool) {
  std::string buffer;
  for (;;) {
    boost::system::error_code ec;
    const std::size_t n = co_await net::async_read_until(
        socket, net::dynamic_buffer(buffer), '\n', net::redirect_error(net::use_awaitable, ec));
    if (ec) co_return;  // the client closed
    const int arg = std::stoi(buffer.substr(0, n));
    buffer.erase(0, n);
    // The CPU work runs on the pool; this coroutine resumes on the io_context with the result.
    const long value = co_await crew::async_run(pool, fib, arg, net::use_awaitable);
    co_await net::async_write(socket, net::buffer(std::to_string(value) + "\n"),
                              net::use_awaitable);
  }
}

net::awaitable<void> listen(tcp::acceptor& acceptor, crew::ThreadPool& pool) {
  for (;;) {
    tcp::socket socket = co_await acceptor.async_accept(net::use_awaitable);
    net::co_spawn(acceptor.get_executor(), serve_connection(std::move(socket), pool),
                  net::detached);
  }
}

net::awaitable<int> client(tcp::endpoint at) {
  tcp::socket socket(co_await net::this_coro::executor);
  co_await socket.async_connect(at, net::use_awaitable);
  int wrong = 0;
  std::string buffer;
  for (int arg = 28; arg < 34; ++arg) {
    co_await net::async_write(socket, net::buffer(std::to_string(arg) + "\n"), net::use_awaitable);
    const std::size_t n = co_await net::async_read_until(socket, net::dynamic_buffer(buffer), '\n',
                                                         net::use_awaitable);
    if (std::stol(buffer.substr(0, n)) != fib(arg)) ++wrong;
    buffer.erase(0, n);
  }
  co_return wrong;
}

}  // namespace

int main() {
  crew::ThreadPool pool({.max_workers = 2});
  net::io_context ioc;  // one thread: everything below but fib runs on it
  tcp::acceptor acceptor(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  net::co_spawn(ioc, listen(acceptor, pool), net::detached);

  constexpr int kClients = 8;
  int done = 0, wrong = 0;
  for (int i = 0; i < kClients; ++i) {
    net::co_spawn(ioc, client(acceptor.local_endpoint()), [&](std::exception_ptr e, int w) {
      wrong += e ? 1 : w;
      if (++done == kClients) acceptor.close();  // no new connections: run() can end
    });
  }

  // A 1 ms ticker: how late does the loop get to its timers while the pool is busy?
  std::vector<double> lag_ms;
  net::steady_timer timer(ioc);
  std::function<void()> tick = [&] {
    const auto due = std::chrono::steady_clock::now() + 1ms;
    timer.expires_at(due);
    timer.async_wait([&, due](boost::system::error_code) {
      lag_ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - due)
              .count());
      if (done < kClients) tick();
    });
  };
  tick();
  ioc.run();

  std::sort(lag_ms.begin(), lag_ms.end());
  std::printf("%d clients x 6 requests, %d wrong answers\n", kClients, wrong);
  std::printf("timer lag over %zu ticks: median %.2f ms, max %.2f ms\n", lag_ms.size(),
              lag_ms[lag_ms.size() / 2], lag_ms.back());
  return wrong == 0 ? 0 : 1;
}
