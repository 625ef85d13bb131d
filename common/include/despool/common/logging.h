// Process-wide logging set-up over spdlog, and named per-component loggers.
//
// Contract:
// - Call SetupLogging once early in main() (before threads start); calling it again
//   (tests) re-points every logger obtained so far at the new sinks, level and format.
// - GetLogger("broker") returns the spdlog logger of that name, creating it on first use with
//   the configured sinks and level; all loggers share the same sinks (one stream, lines never
//   interleave mid-line). Safe to call from any thread. Before SetupLogging, loggers use the
//   defaults (info, text, stderr).
// - Text lines:  2026-11-25T21:22:33.123Z info broker: msg
// - JSON lines:  {"ts":"2026-11-25T21:22:33.123Z","level":"info","logger":"broker","msg":"..."}
//   exactly one object per line; the message is escaped by nlohmann::json (quotes,
//   backslashes, control characters and newlines become \" \\ \u001f \n); invalid UTF-8 is
//   replaced by U+FFFD. When the message contains key=value fields (see below) they are also
//   given as strings in a "fields" object: {"...","msg":"job applied job=abc dp=lab1",
//   "fields":{"job":"abc","dp":"lab1"}}. "msg" always holds the full message.
// - Structured fields: write messages as "<text> key=value key2=value2"; quote values that
//   may contain spaces or quotes with LogQuote(). Keys: [A-Za-z_][A-Za-z0-9_.-]*.
// - State lives only in spdlog's registry (the default logger holds the sinks).
#pragma once

#include <spdlog/formatter.h>
#include <spdlog/spdlog.h>

#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>

#include "despool/common/result.h"

namespace despool {

enum class LogFormat { kText, kJson };

struct LogOptions {
  spdlog::level::level_enum level = spdlog::level::info;
  LogFormat format = LogFormat::kText;
  // Test hooks; at most one of them. Default: stderr.
  std::ostream* stream = nullptr;  // not owned; must outlive the loggers' use
  std::string file;                // appended to; created if missing
};

// "trace" | "debug" | "info" | "warn" | "error" (the contract's --log-level values).
Result<spdlog::level::level_enum> ParseLogLevel(std::string_view text);
// "text" | "json".
Result<LogFormat> ParseLogFormat(std::string_view text);
// Both at once, e.g. from --log-level/--log-format or the config file.
Result<LogOptions> MakeLogOptions(std::string_view level, std::string_view format);

// kInvalidArgument if both stream and file are set; kIo if the file cannot be opened.
Status SetupLogging(const LogOptions& options);

// The logger named `component` ("broker", "worker", "engine", "ctl", "store", ...).
std::shared_ptr<spdlog::logger> GetLogger(std::string_view component);

// A value for a key=value field: returned as is when it is non-empty and has no space,
// quote, backslash, '=' or control character; otherwise double-quoted with \" \\ \n \t
// \r and \xNN escapes. LogQuote("a b") == "\"a b\"".
std::string LogQuote(std::string_view value);

// Splits key=value fields out of a message (what the JSON format puts in "fields").
// Tokens are separated by spaces; a token counts when it starts with a valid key followed by
// '='; a value starting with '"' runs to the closing unescaped '"' and is unescaped.
// A later duplicate key wins. Exposed for tests and tools.
std::map<std::string, std::string> ParseLogFields(std::string_view message);

// spdlog formatter for the JSON format (exposed so tests can drive it directly).
class JsonLogFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;
};

}  // namespace despool
