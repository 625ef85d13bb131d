// Command-line glue shared by despool-broker, despool-worker and despoolctl (CLI11 2.1.2).
//
// Typical main():
//   CLI::App app{"despool broker", "despool-broker"};
//   despool::CommonOptions common;
//   despool::AddCommonOptions(app, common);
//   std::string frontend = "tcp://127.0.0.1:7400";
//   CLI::Option* frontend_opt = app.add_option("--frontend", frontend, "...");
//   return despool::RunCli(app, argc, argv, [&]() -> int {
//     // load common.config_path (if given) with ConfigReader, then let flags win:
//     despool::OverrideFromFlag(frontend_opt, frontend, settings.frontend);
//     ...
//     return despool::kExitOk;
//   });
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <functional>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "despool/common/logging.h"
#include "despool/common/result.h"

namespace despool {

// Exit codes shared by all three programs (CONTRACT.md, "Exit codes").
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;        // runtime error
inline constexpr int kExitUsage = 2;        // usage or config error, every CLI parse error
inline constexpr int kExitJobFailed = 3;    // --wait: a job ended dead or cancelled
inline constexpr int kExitWaitTimeout = 4;  // --wait: --wait-timeout passed

// Values of the common flags, plus their Option handles so a program can tell whether a flag
// was given (flags override the config file).
struct CommonOptions {
  std::string config_path;          // --config FILE (must exist); empty = none
  std::string log_level = "info";   // --log-level trace|debug|info|warn|error
  std::string log_format = "text";  // --log-format text|json
  CLI::Option* config_option = nullptr;
  CLI::Option* log_level_option = nullptr;
  CLI::Option* log_format_option = nullptr;
};

// Adds --config, --log-level, --log-format and --version to `app` (the top-level app; a
// subcommand may still define its own --version option, e.g. `submit --version N`).
// --version prints "<program> <DESPOOL_VERSION>" to stdout (program = app.get_name()
// without directories) and RunCli returns 0. `options` must outlive parsing.
void AddCommonOptions(CLI::App& app, CommonOptions& options);

// Logging settings from the flags and the config file's values: a flag given on the command
// line wins, then a non-empty config value, then the default (info, text). Invalid config
// values are kInvalidArgument naming the value (callers report them as exit 2).
Result<LogOptions> ResolveLogOptions(const CommonOptions& flags, std::string_view config_level,
                                     std::string_view config_format);

// Parses the command line and runs `run` on success.
// - --help / --help-all / --version: prints to `out`, returns 0 without calling `run`.
// - any CLI::ParseError (unknown option, bad value, missing required option or subcommand,
//   failed validator): prints "<program>: <message>" and a --help hint to `err`, returns 2.
// - otherwise returns run()'s value. A std::exception escaping run() is printed as
//   "<program>: error: <what>" to `err` and gives 1 (a last-resort edge; prefer returning).
int RunCli(CLI::App& app, int argc, const char* const* argv, const std::function<int()>& run,
           std::ostream& out = std::cout, std::ostream& err = std::cerr);
// Same, with the arguments after the program name (tests).
int RunCli(CLI::App& app, std::vector<std::string> args, const std::function<int()>& run,
           std::ostream& out = std::cout, std::ostream& err = std::cerr);

// Validator for unsigned integer options. CLI11 2.1.2 turns "-1" into 2^64-1 for unsigned
// types and reads "010" as octal and "0x10" as hex; this accepts only decimal digits without
// leading zeros ("0" itself is fine) that fit in uint64, so use it on every unsigned option:
//   app.add_option("--max-attempts", n)->check(despool::UnsignedValidator());
// The option's own type still bounds the value (CLI11 rejects 300 for a uint8_t).
CLI::Validator UnsignedValidator();

// Validator for duration strings (duration.h ParseDuration), type name DURATION.
CLI::Validator DurationValidator();

// Adds an option taking a duration ("250ms", "30s", "5m", "2h", plain number = seconds) that
// stores into `target` when given. Returns the option (count() tells whether it was given).
CLI::Option* AddDurationOption(CLI::App& app, const std::string& name,
                               std::chrono::milliseconds& target, const std::string& description);

// True when `option` appeared on the command line (null-safe).
inline bool GivenOnCommandLine(const CLI::Option* option) {
  return option != nullptr && option->count() > 0;
}

// "Flags override the config file": copies flag_value into setting only when the flag was
// given on the command line.
template <typename T, typename U>
void OverrideFromFlag(const CLI::Option* option, const U& flag_value, T& setting) {
  if (GivenOnCommandLine(option)) setting = flag_value;
}

}  // namespace despool
