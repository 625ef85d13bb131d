// Writes the decode fuzzer's seed corpus: every message type encoded, fully populated and
// minimal, plus malformed frames that reach each error path. Deterministic; the output is
// committed in tests/fuzz/corpus/decode/ (regenerate: despool_make_decode_corpus DIR).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "despool/messages/codec.h"
#include "messages/raw.h"
#include "messages/samples.h"

namespace {

using namespace despool::msg;
using namespace despool::msg::testing;
using namespace std::string_literals;

std::vector<std::pair<std::string, std::string>> Corpus() {
  std::vector<std::pair<std::string, std::string>> out;
  for (Envelope& e : AllSamples()) {
    out.emplace_back("full-"s + TypeName(e.body), Encode(e));
  }
  // Minimal versions of a few messages (defaults, omitted optionals).
  out.emplace_back("min-status", Encode(Envelope{kProtocolVersion, 1, StatusRequest{}}));
  out.emplace_back("min-heartbeat", Encode(Envelope{kProtocolVersion, 0, Heartbeat{}}));
  JobResult applied;
  applied.job_id = "job-1";
  applied.attempt = 1;
  out.emplace_back("min-result", Encode(Envelope{kProtocolVersion, 0, applied}));

  auto edited = [&](const char* name, const Envelope& base, auto edit) {
    Raw raw = FromFrame(Encode(base));
    edit(raw);
    out.emplace_back(name, ToFrame(raw));
  };
  const std::vector<Envelope> samples = AllSamples();
  const Envelope& submit = *std::find_if(samples.begin(), samples.end(), [](const Envelope& e) {
    return std::holds_alternative<SubmitRequest>(e.body);
  });
  edited("bad-package-id", submit, [](Raw& r) { r.At("b.instructions.0.package") = "../etc"; });
  edited("bad-source", submit, [](Raw& r) { r.At("b.instructions.0.source") = "/srv/../etc"; });
  edited("bad-version", submit, [](Raw& r) { r.At("b.instructions.0.version") = std::uint64_t{1} << 53; });
  edited("wrong-type", submit, [](Raw& r) { r.At("b.instructions.0.dps") = "dp1"; });
  edited("missing-required", submit, [](Raw& r) { r.Erase("b.instructions"); });
  edited("unknown-type", submit, [](Raw& r) { r.At("t") = "launch"; });
  edited("bad-protocol-version", submit, [](Raw& r) { r.At("v") = std::uint64_t{2}; });
  edited("duplicate-key", submit, [](Raw& r) { r.map().emplace_back("v", Raw(std::uint64_t{1})); });
  edited("unknown-keys", submit, [](Raw& r) { r.At("b.instructions.0.future") = RawMap{{"x", Raw(1)}}; });
  const std::string full = Encode(submit);
  out.emplace_back("truncated", full.substr(0, full.size() / 2));
  out.emplace_back("trailing-bytes", full + "\xc0"s);
  out.emplace_back("huge-array", "\xdd\xff\xff\xff\xff"s);
  out.emplace_back("huge-map", "\xdf\xff\xff\xff\xff"s);
  out.emplace_back("huge-str", "\xdb\xff\xff\xff\xff"s);
  out.emplace_back("deep-nesting", std::string(64, '\x91') + "\xc0"s);
  out.emplace_back("not-a-map", "\x93\x01\x02\x03"s);
  out.emplace_back("empty", "");
  out.emplace_back("garbage", "\xc1\xff\x00\x7f GET / HTTP/1.1\r\n"s);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir(argv[1]);
  std::filesystem::create_directories(dir);
  std::size_t written = 0;
  for (const auto& [name, bytes] : Corpus()) {
    std::ofstream(dir / (name + ".msgpack"), std::ios::binary) << bytes;
    ++written;
  }
  std::printf("wrote %zu files to %s\n", written, dir.c_str());
  return 0;
}
