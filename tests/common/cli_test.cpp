#include "despool/common/cli.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <sstream>

namespace despool {
namespace {

using std::chrono::milliseconds;

// A small program shaped like despoolctl: common options, an unsigned option, a duration
// option and a subcommand with its own --version.
struct Program {
  Program() : app("test program", "despoolctl") {
    AddCommonOptions(app, common);
    limit_option = app.add_option("--limit", limit, "limit")->check(UnsignedValidator());
    timeout_option = AddDurationOption(app, "--timeout", timeout, "request timeout");
    submit = app.add_subcommand("submit", "submit");
    submit->add_option("--version", submit_version, "package version")->check(UnsignedValidator());
  }

  int Run(std::vector<std::string> args) {
    ran = false;
    return RunCli(
        app, std::move(args),
        [this] {
          ran = true;
          return 0;
        },
        out, err);
  }

  CLI::App app;
  CommonOptions common;
  std::uint64_t limit = 1000;
  std::uint64_t submit_version = 0;
  milliseconds timeout{10000};
  CLI::Option* limit_option = nullptr;
  CLI::Option* timeout_option = nullptr;
  CLI::App* submit = nullptr;
  bool ran = false;
  std::ostringstream out;
  std::ostringstream err;
};

TEST(CliTest, ParseErrorsExitTwo) {
  for (const std::vector<std::string>& args : {std::vector<std::string>{"--no-such-flag"},
                                               {"--limit", "abc"},
                                               {"--limit"},
                                               {"--log-level", "verbose"},
                                               {"--log-format", "xml"},
                                               {"--timeout", "5x"},
                                               {"--config", "/nonexistent/despool.toml"},
                                               {"unexpected-positional"}}) {
    Program p;
    EXPECT_EQ(p.Run(args), kExitUsage) << args[0];
    EXPECT_FALSE(p.ran);
    EXPECT_NE(p.err.str().find("despoolctl: "), std::string::npos) << p.err.str();
    EXPECT_TRUE(p.out.str().empty());
  }
}

TEST(CliTest, NegativeForUnsignedExitsTwo) {
  Program p;
  EXPECT_EQ(p.Run({"--limit", "-1"}), kExitUsage);
  EXPECT_NE(p.err.str().find("negative"), std::string::npos) << p.err.str();
  Program q;
  EXPECT_EQ(q.Run({"submit", "--version", "-1"}), kExitUsage);
  Program r;
  EXPECT_EQ(r.Run({"--limit", "18446744073709551616"}), kExitUsage);
  Program s;
  EXPECT_EQ(s.Run({"--limit", "0x10"}), kExitUsage);
}

TEST(CliTest, UnsignedValuesAreDecimal) {
  Program p;
  EXPECT_EQ(p.Run({"--limit", "010"}), kExitUsage);  // CLI11 would read octal 8
  Program d;
  ASSERT_EQ(d.Run({"--limit", "10"}), 0) << d.err.str();
  EXPECT_EQ(d.limit, 10u);
  Program q;
  ASSERT_EQ(q.Run({"--limit", "18446744073709551615"}), 0) << q.err.str();
  EXPECT_EQ(q.limit, UINT64_MAX);
  Program r;
  ASSERT_EQ(r.Run({"--limit", "0"}), 0);
  EXPECT_EQ(r.limit, 0u);
}

TEST(CliTest, HelpAndVersionExitZero) {
  Program p;
  EXPECT_EQ(p.Run({"--help"}), kExitOk);
  EXPECT_FALSE(p.ran);
  EXPECT_NE(p.out.str().find("--log-format"), std::string::npos);
  EXPECT_TRUE(p.err.str().empty());

  Program v;
  EXPECT_EQ(v.Run({"--version"}), kExitOk);
  EXPECT_FALSE(v.ran);
  EXPECT_EQ(v.out.str(), std::string("despoolctl ") + DESPOOL_VERSION + "\n");

  Program sub_help;
  EXPECT_EQ(sub_help.Run({"submit", "--help"}), kExitOk);
  EXPECT_NE(sub_help.out.str().find("package version"), std::string::npos);
}

TEST(CliTest, HelpAndVersionWinOverMissingRequirements) {
  for (const char* flag : {"--version", "--help"}) {
    CLI::App app("worker", "despool-worker");
    CommonOptions common;
    AddCommonOptions(app, common);
    std::vector<std::string> dps;
    app.add_option("--dp", dps, "NAME=ROOT")->required();
    std::ostringstream out, err;
    EXPECT_EQ(RunCli(
                  app, {flag}, [] { return 0; }, out, err),
              kExitOk)
        << flag << err.str();
    EXPECT_FALSE(out.str().empty());
    std::ostringstream out2, err2;
    EXPECT_EQ(RunCli(
                  app, {}, [] { return 0; }, out2, err2),
              kExitUsage);  // --dp missing
    EXPECT_NE(err2.str().find("--dp"), std::string::npos) << err2.str();
  }
  CLI::App ctl("ctl", "despoolctl");
  CommonOptions common;
  AddCommonOptions(ctl, common);
  ctl.add_subcommand("status", "status");
  ctl.require_subcommand(1);
  std::ostringstream out, err;
  EXPECT_EQ(RunCli(
                ctl, {"--version"}, [] { return 0; }, out, err),
            kExitOk);
  EXPECT_EQ(RunCli(
                ctl, {}, [] { return 0; }, out, err),
            kExitUsage);
  EXPECT_EQ(RunCli(
                ctl, {"bogus"}, [] { return 0; }, out, err),
            kExitUsage);
}

TEST(CliTest, SubcommandVersionIsItsOwnOption) {
  Program p;
  ASSERT_EQ(p.Run({"submit", "--version", "42"}), 0) << p.err.str();
  EXPECT_TRUE(p.ran);
  EXPECT_EQ(p.submit_version, 42u);
  EXPECT_TRUE(p.out.str().empty());
}

TEST(CliTest, DurationOptionAndGivenFlags) {
  Program p;
  ASSERT_EQ(p.Run({"--timeout", "250ms", "--log-level", "debug"}), 0) << p.err.str();
  EXPECT_EQ(p.timeout, milliseconds(250));
  EXPECT_TRUE(GivenOnCommandLine(p.timeout_option));
  EXPECT_FALSE(GivenOnCommandLine(p.limit_option));
  EXPECT_FALSE(GivenOnCommandLine(nullptr));

  std::uint64_t from_config = 5;
  OverrideFromFlag(p.limit_option, p.limit, from_config);
  EXPECT_EQ(from_config, 5u);  // not given: the config value stays
  milliseconds config_timeout{30000};
  OverrideFromFlag(p.timeout_option, p.timeout, config_timeout);
  EXPECT_EQ(config_timeout, milliseconds(250));

  // --log-level given wins over the config; --log-format not given: config value applies.
  auto log = ResolveLogOptions(p.common, "error", "json");
  ASSERT_TRUE(log.ok());
  EXPECT_EQ(log->level, spdlog::level::debug);
  EXPECT_EQ(log->format, LogFormat::kJson);
  EXPECT_FALSE(ResolveLogOptions(p.common, "", "yaml").ok());
}

TEST(CliTest, DefaultsWhenNothingGiven) {
  Program p;
  ASSERT_EQ(p.Run({}), 0);
  EXPECT_TRUE(p.ran);
  EXPECT_EQ(p.timeout, milliseconds(10000));
  auto log = ResolveLogOptions(p.common, "", "");
  ASSERT_TRUE(log.ok());
  EXPECT_EQ(log->level, spdlog::level::info);
  EXPECT_EQ(log->format, LogFormat::kText);
}

TEST(CliTest, ExceptionFromRunIsRuntimeError) {
  Program p;
  const int rc = RunCli(
      p.app, {}, []() -> int { throw std::runtime_error("boom"); }, p.out, p.err);
  EXPECT_EQ(rc, kExitError);
  EXPECT_NE(p.err.str().find("boom"), std::string::npos);
}

TEST(CliTest, ArgvOverload) {
  Program p;
  const char* argv[] = {"/usr/bin/despoolctl", "--limit", "-5"};
  EXPECT_EQ(RunCli(
                p.app, 3, argv, [] { return 0; }, p.out, p.err),
            kExitUsage);
  EXPECT_EQ(p.err.str().rfind("despoolctl: ", 0), 0u) << p.err.str();
}

}  // namespace
}  // namespace despool
