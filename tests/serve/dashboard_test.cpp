// The dashboard's embedded files (src/serve/dashboard.hpp) and their routes in `crew serve`:
// served without a token, revalidated with ETag / If-None-Match. The page itself is tested in a
// browser by tests/browser/dashboard.test.js.
#include "dashboard.hpp"

#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <utility>  // before Boost.Asio 1.74, whose awaitable.hpp forgets it

#include <gtest/gtest.h>
#include <unistd.h>

#include "http_client.hpp"
#include "server.hpp"
#include "tasks.hpp"

namespace {
namespace http = boost::beast::http;
using crew::serve_app::dashboard_asset;
using crew::serve_app::etag_matches;
using crew_test::Client;

TEST(DashboardAssets, ThePageAndEveryFileItLinksAreEmbedded) {
  const auto page = dashboard_asset("");
  ASSERT_TRUE(page);
  EXPECT_EQ(std::string(page->content_type), "text/html; charset=utf-8");
  EXPECT_EQ(dashboard_asset("index.html")->body, page->body);
  const std::string html(page->body);
  // The files the page links: src="…" and href="…" values without a scheme. (No std::regex:
  // GCC 12 warns inside libstdc++'s regex compiler at -O1, the sanitizer builds' level.)
  std::set<std::string> linked;
  for (const std::string attribute : {"src=\"", "href=\""}) {
    for (auto at = html.find(attribute); at != std::string::npos;
         at = html.find(attribute, at + 1)) {
      const auto from = at + attribute.size();
      const auto to = html.find('"', from);
      if (to == std::string::npos) break;
      const std::string value = html.substr(from, to - from);
      if (value.find(':') == std::string::npos) linked.insert(value);
    }
  }
  EXPECT_EQ(linked,
            (std::set<std::string>{"app.js", "style.css", "uPlot.iife.min.js", "uPlot.min.css"}));
  std::set<std::string_view> etags{page->etag};
  for (const auto& name : linked) {
    const auto asset = dashboard_asset(name);
    ASSERT_TRUE(asset) << name;
    EXPECT_FALSE(asset->body.empty()) << name;
    EXPECT_EQ(std::string(asset->content_type),
              name.ends_with(".js") ? "text/javascript; charset=utf-8" : "text/css; charset=utf-8")
        << name;
    EXPECT_TRUE(asset->etag.size() > 2 && asset->etag.front() == '"' && asset->etag.back() == '"')
        << asset->etag;
    etags.insert(asset->etag);
  }
  EXPECT_EQ(etags.size(), linked.size() + 1) << "every file has its own ETag";
  // uPlot as vendored, whole: its banner names the version third_party/uplot/README.md gives.
  EXPECT_TRUE(dashboard_asset("uPlot.iife.min.js")
                  ->body.starts_with("/*! https://github.com/leeoniya/uPlot (v1.6.32) */"));
}

TEST(DashboardAssets, NothingElseIsServed) {
  for (const char* path : {"nope.js", "../server.cpp", "/index.html", "index.html/", "INDEX.HTML",
                           "dashboard.cpp", "LICENSE"}) {
    EXPECT_FALSE(dashboard_asset(path)) << path;
  }
}

TEST(DashboardAssets, IfNoneMatchNamesTheTagInAListWeaklyOrWithAStar) {
  const std::string_view tag = R"("abc123")";
  EXPECT_TRUE(etag_matches(R"("abc123")", tag));
  EXPECT_TRUE(etag_matches(R"("x", W/"abc123" ,"y")", tag));
  EXPECT_TRUE(etag_matches(" * ", tag));
  EXPECT_FALSE(etag_matches("", tag));
  EXPECT_FALSE(etag_matches(R"("abc12")", tag));
  EXPECT_FALSE(etag_matches(R"(abc123)", tag));  // unquoted: not this tag
  EXPECT_FALSE(etag_matches(R"("x", , "y")", tag));
}

// A server whose every other route needs a token.
class DashboardRoutes : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("crew-dashboard-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    const auto tokens = (dir_ / "tokens").string();
    std::FILE* f = std::fopen(tokens.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("s3cret\n", f);
    std::fclose(f);
    static const crew::Tasks tasks = [] {
      crew::Tasks t;
      crew::serve_app::add_builtin_tasks(t);
      return t;
    }();
    crew::serve_app::ThreadRunnerOptions threads;
    threads.workers = 1;
    crew::serve_app::ServeConfig c;
    c.port = 0;
    c.log_format = "off";
    c.auth_token_file = tokens;
    server_ = std::make_unique<crew::serve_app::Server>(
        c, crew::serve_app::make_thread_runner(tasks, threads));
    server_->start();
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::uint16_t port() const { return server_->port(); }

 private:
  std::filesystem::path dir_;
  std::unique_ptr<crew::serve_app::Server> server_;
};

TEST_F(DashboardRoutes, ThePageNeedsNoTokenAndRedirectsToItsFolder) {
  const auto bare = Client(port()).request(http::verb::get, "/dashboard");
  EXPECT_EQ(bare.status, 302);
  EXPECT_EQ(bare.raw[http::field::location], "dashboard/");
  const auto page = Client(port()).request(http::verb::get, "/dashboard/");
  EXPECT_EQ(page.status, 200);
  EXPECT_EQ(page.raw[http::field::content_type], "text/html; charset=utf-8");
  EXPECT_EQ(page.body, dashboard_asset("")->body);
  // The rest of the API still needs its token, and so does a path that only looks alike.
  EXPECT_EQ(Client(port()).request(http::verb::get, "/api/stats").status, 401);
  EXPECT_EQ(Client(port()).request(http::verb::get, "/dashboards").status, 401);
  EXPECT_EQ(Client(port()).request(http::verb::get, "/dashboard/nope.js").status, 404);
  EXPECT_EQ(Client(port()).request(http::verb::post, "/dashboard/app.js").status, 405);
}

TEST_F(DashboardRoutes, AFileIsRevalidatedWith304AndTheConnectionGoesOn) {
  Client client(port());
  const auto first = client.request(http::verb::get, "/dashboard/app.js");
  ASSERT_EQ(first.status, 200);
  EXPECT_EQ(first.raw[http::field::cache_control], "no-cache");
  const std::string etag(first.raw[http::field::etag]);
  EXPECT_EQ(etag, dashboard_asset("app.js")->etag);
  const auto again =
      client.request(http::verb::get, "/dashboard/app.js", "", "", {{"If-None-Match", etag}});
  EXPECT_EQ(again.status, 304);
  EXPECT_TRUE(again.body.empty());
  EXPECT_EQ(again.raw.count(http::field::content_length), 0u);
  EXPECT_EQ(again.raw[http::field::etag], etag);
  // Another file's tag is not this one's: the whole file again, on the same connection.
  const auto other = client.request(http::verb::get, "/dashboard/app.js", "", "",
                                    {{"If-None-Match", std::string(dashboard_asset("")->etag)}});
  EXPECT_EQ(other.status, 200);
  EXPECT_EQ(other.body, first.body);
}

}  // namespace
