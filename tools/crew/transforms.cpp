#include "transforms.hpp"

#include <stdexcept>
#include <utility>

#include <fmt/format.h>
#include <openssl/evp.h>

namespace crew::tool {
namespace {

class UpperCodec final : public stream::ChunkCodec {
 public:
  void feed(Buffer input, std::vector<Job>& out) override {
    out.emplace_back([b = std::move(input)]() mutable {
      for (std::byte& c : b.span()) {
        if (c >= std::byte{'a'} && c <= std::byte{'z'}) c &= std::byte{0xdf};
      }
      return std::move(b);
    });
  }
  void finish(std::vector<Job>&) override {}
  std::string_view name() const override { return "upper"; }
};

class Sha256Codec final : public stream::ChunkCodec {
 public:
  explicit Sha256Codec(std::function<void(const std::string&)> report)
      : report_(std::move(report)), ctx_(EVP_MD_CTX_new()) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) {
      throw std::runtime_error("sha256: OpenSSL digest init failed");
    }
  }
  void feed(Buffer input, std::vector<Job>& out) override {
    EVP_DigestUpdate(ctx_.get(), input.data(), input.size());
    out.emplace_back([b = std::move(input)]() mutable { return std::move(b); });
  }
  void finish(std::vector<Job>&) override {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx_.get(), md, &n);
    std::string hex;
    for (unsigned i = 0; i < n; ++i) hex += fmt::format("{:02x}", md[i]);
    report_(hex);
  }
  std::string_view name() const override { return "sha256"; }

 private:
  struct Free {
    void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
  };
  std::function<void(const std::string&)> report_;
  std::unique_ptr<EVP_MD_CTX, Free> ctx_;
};

}  // namespace

std::unique_ptr<stream::ChunkCodec> make_upper_codec() {
  return std::make_unique<UpperCodec>();
}

std::unique_ptr<stream::ChunkCodec> make_sha256_codec(
    std::function<void(const std::string&)> report) {
  return std::make_unique<Sha256Codec>(std::move(report));
}

}  // namespace crew::tool
