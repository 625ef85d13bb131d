#include "despool/common/cli.h"

#include <cstdint>
#include <exception>

#include "despool/common/duration.h"

#ifndef DESPOOL_VERSION
#define DESPOOL_VERSION "unknown"
#endif

namespace despool {
namespace {

std::string ProgramName(const CLI::App& app) {
  std::string name = app.get_name();
  const auto slash = name.rfind('/');
  if (slash != std::string::npos) name.erase(0, slash + 1);
  return name.empty() ? "despool" : name;
}

int HandleParseError(const CLI::App& app, const CLI::ParseError& e, std::ostream& out,
                     std::ostream& err) {
  // Help and version are "errors" in CLI11 with exit code 0: let CLI11 print them.
  if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {
    app.exit(e, out, err);
    return kExitOk;
  }
  err << ProgramName(app) << ": " << e.what() << "\n"
      << "Run with --help for more information.\n"
      << std::flush;
  return kExitUsage;
}

int RunParsed(CLI::App& app, const std::function<int()>& run, std::ostream& err) {
  try {
    return run();
  } catch (const CLI::ParseError& e) {
    // A program may call app-level validation from run(); still a usage error.
    err << ProgramName(app) << ": " << e.what() << "\n" << std::flush;
    return kExitUsage;
  } catch (const std::exception& e) {
    err << ProgramName(app) << ": error: " << e.what() << "\n" << std::flush;
    return kExitError;
  }
}

}  // namespace

void AddCommonOptions(CLI::App& app, CommonOptions& options) {
  options.config_option =
      app.add_option("--config", options.config_path,
                     "TOML config file (command-line flags override its settings)")
          ->type_name("FILE")
          ->check(CLI::ExistingFile);
  options.log_level_option =
      app.add_option("--log-level", options.log_level, "Log level: trace|debug|info|warn|error")
          ->type_name("LEVEL")
          ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}))
          ->default_str("info");
  options.log_format_option = app.add_option("--log-format", options.log_format,
                                             "Log format: text|json (json: one object per line)")
                                  ->type_name("FORMAT")
                                  ->check(CLI::IsMember({"text", "json"}))
                                  ->default_str("text");
  const CLI::App* app_ptr = &app;
  app.set_version_flag(
      "--version", [app_ptr] { return ProgramName(*app_ptr) + " " DESPOOL_VERSION; },
      "Print the program version and exit");
}

Result<LogOptions> ResolveLogOptions(const CommonOptions& flags, std::string_view config_level,
                                     std::string_view config_format) {
  std::string_view level = "info";
  if (GivenOnCommandLine(flags.log_level_option)) {
    level = flags.log_level;
  } else if (!config_level.empty()) {
    level = config_level;
  }
  std::string_view format = "text";
  if (GivenOnCommandLine(flags.log_format_option)) {
    format = flags.log_format;
  } else if (!config_format.empty()) {
    format = config_format;
  }
  return MakeLogOptions(level, format);
}

int RunCli(CLI::App& app, int argc, const char* const* argv, const std::function<int()>& run,
           std::ostream& out, std::ostream& err) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return HandleParseError(app, e, out, err);
  }
  return RunParsed(app, run, err);
}

int RunCli(CLI::App& app, std::vector<std::string> args, const std::function<int()>& run,
           std::ostream& out, std::ostream& err) {
  std::reverse(args.begin(), args.end());  // CLI11 takes the vector form reversed
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return HandleParseError(app, e, out, err);
  }
  return RunParsed(app, run, err);
}

CLI::Validator UnsignedValidator() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        if (value.empty()) return "expected a non-negative integer, got an empty value";
        for (const char c : value) {
          if (c < '0' || c > '9') {
            return value.front() == '-' ? "must not be negative: " + value
                                        : "expected a non-negative decimal integer: " + value;
          }
        }
        // CLI11 reads "010" as octal: refuse leading zeros rather than guess.
        if (value.size() > 1 && value.front() == '0') return "no leading zeros allowed: " + value;
        // Longer than 2^64-1 (20 digits) or over it at 20 digits.
        if (value.size() > 20 || (value.size() == 20 && value > "18446744073709551615")) {
          return "too large: " + value;
        }
        return std::string();
      },
      "UINT", "unsigned integer");
}

CLI::Validator DurationValidator() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        auto parsed = ParseDuration(value);
        return parsed.ok() ? std::string() : parsed.error().message;
      },
      "DURATION", "duration");
}

CLI::Option* AddDurationOption(CLI::App& app, const std::string& name,
                               std::chrono::milliseconds& target, const std::string& description) {
  return app
      .add_option_function<std::string>(
          name,
          [&target](const std::string& value) {
            // The validator already accepted it; parse again for the value.
            auto parsed = ParseDuration(value);
            if (!parsed.ok()) throw CLI::ValidationError(parsed.error().message);
            target = *parsed;
          },
          description)
      ->type_name("DURATION")
      ->check(DurationValidator())
      ->default_str(FormatDuration(target));
}

}  // namespace despool
