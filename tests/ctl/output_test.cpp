// Output helpers and the instructions-file parser, in process.
#include <gtest/gtest.h>

#include <sstream>

#include "ctl/fake_broker.h"
#include "despool/ctl/batch.h"
#include "despool/ctl/output.h"

namespace despool::ctl {
namespace {

TEST(OutputTest, DumpJsonNeverThrowsOnInvalidUtf8) {
  auto j = despool::testing::MakeJob("j", "lab1", "app", 1, msg::JobState::kDeferred);
  j.in_use = {std::string("bin/\xff\xfe.exe")};
  const std::string text = DumpJson(JobJson(j), -1);
  EXPECT_NE(text.find("bin/\xef\xbf\xbd\xef\xbf\xbd.exe"), std::string::npos) << text;
  EXPECT_EQ(text.find('\n'), std::string::npos);
}

TEST(OutputTest, TableAlignsColumnsAndTrimsTrailingSpace) {
  Table t({"A", "LONGER", "C"});
  t.Add({"xxxx", "y", ""});
  std::ostringstream out;
  t.Print(out);
  EXPECT_EQ(out.str(), "A     LONGER  C\nxxxx  y\n");
}

TEST(OutputTest, HumanUnits) {
  EXPECT_EQ(Plural(1, "attempt"), "1 attempt");
  EXPECT_EQ(Plural(3, "attempt"), "3 attempts");
  EXPECT_EQ(HumanBytes(512), "512 B");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes(5u << 20), "5.0 MiB");
}

TEST(OutputTest, JobDetailOfADeferredJob) {
  auto j = despool::testing::MakeJob("j", "lab1", "app", 1, msg::JobState::kDeferred);
  j.attempts = 2;
  j.next_attempt_at_ms = 1000 + 42000;
  j.in_use = {"bin/app"};
  j.holders = {{12, "smbd", "bin/app"}};
  EXPECT_EQ(JobDetail(j, 1000), "retry in 42s, 2 attempts, in use: bin/app (pid 12 smbd holds bin/app)");
}

TEST(BatchTest, DefaultsAndPrecedence) {
  InstructionDefaults cli;
  cli.policy.max_attempts = 5;
  auto r = ParseInstructions(R"(
retry_base = 10
max_attempts = 2
dp_groups = ["eu"]
[[instruction]]
package = "a"
version = 1
source = "rel/dir/"
[[instruction]]
package = "b"
version = 2
source = "/abs"
dps = ["x"]
max_attempts = 9
on_exhausted = "force"
checksum = true
)",
                             "f.toml", "/base", cli);
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->size(), 2u);
  const auto& a = (*r)[0];
  EXPECT_EQ(a.source, "/base/rel/dir");
  EXPECT_EQ(a.dp_groups, std::vector<std::string>{"eu"});
  EXPECT_EQ(a.policy.retry_base_ms, std::optional<std::uint64_t>(10000));
  EXPECT_EQ(a.policy.max_attempts, std::optional<std::uint32_t>(5)) << "the command line beats the file default";
  const auto& b = (*r)[1];
  EXPECT_EQ(b.dps, std::vector<std::string>{"x"});
  EXPECT_TRUE(b.dp_groups.empty());
  EXPECT_EQ(b.policy.max_attempts, std::optional<std::uint32_t>(9));
  EXPECT_EQ(b.policy.on_exhausted, std::optional<msg::OnExhausted>(msg::OnExhausted::kForce));
  EXPECT_TRUE(b.checksum);
}

TEST(BatchTest, ErrorsNameTheLine) {
  InstructionDefaults cli;
  struct Case {
    const char* text;
    const char* expect;
  } cases[] = {
      {"[[instruction]]\npackage = \"a\"\nversion = 1\nsource = \"/s\"\n", "f.toml:1: no --dp or --dp-group"},
      {"dps = [\"x\"]\n[[instruction]]\npackage = \"../a\"\nversion = 1\nsource = \"/s\"\n", "f.toml:3:"},
      {"dps = [\"x\"]\n[[instruction]]\npackage = \"a\"\nversion = 9007199254740992\nsource = \"/s\"\n", "f.toml:4:"},
      {"dps = [\"x\"]\n[[instruction]]\npackage = \"a\"\nsource = \"/s\"\n", "without version"},
      {"dps = [\"x\"]\n", "no [[instruction]]"},
      {"dps = \"x\"\n[[instruction]]\n", "f.toml:1: dps must be an array of strings"},
      {"[[instruction]]\npackage = \"a\"\nversion = 1\nsource = \"/s\"\ndps = [\"x\"]\nretry_base = \"soon\"\n", "f.toml:6: retry_base"},
      {"[[instruction\n", "f.toml:1:"},
  };
  for (const auto& c : cases) {
    auto r = ParseInstructions(c.text, "f.toml", "/base", cli);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(r.error().message.find(c.expect), std::string::npos) << r.error().message;
  }
}

}  // namespace
}  // namespace despool::ctl
