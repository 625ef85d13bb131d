#include "despool/common/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "despool/common/time.h"

namespace despool {
namespace {

// The logger that holds the configured sinks; GetLogger clones it. Registered in spdlog's
// registry (and made the default logger by SetupLogging), which is the only state we keep.
constexpr const char* kBaseLoggerName = "despool";

const char* LevelName(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
      return "trace";
    case spdlog::level::debug:
      return "debug";
    case spdlog::level::info:
      return "info";
    case spdlog::level::warn:
      return "warn";
    case spdlog::level::err:
      return "error";
    case spdlog::level::critical:
      return "critical";
    default:
      return "off";
  }
}

std::int64_t MsSinceEpoch(const spdlog::details::log_msg& msg) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(msg.time.time_since_epoch()).count();
}

// %L in our text pattern: the level as --log-level spells it ("warn", not "warning").
class LevelFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const std::string_view name = LevelName(msg.level);
    dest.append(name.data(), name.data() + name.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<LevelFlag>();
  }
};

// %T in our text pattern: RFC 3339 UTC with milliseconds, same as the JSON "ts".
class TimeFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const std::string ts = FormatRfc3339Ms(MsSinceEpoch(msg));
    dest.append(ts.data(), ts.data() + ts.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<TimeFlag>();
  }
};

std::unique_ptr<spdlog::formatter> MakeFormatter(LogFormat format) {
  if (format == LogFormat::kJson) return std::make_unique<JsonLogFormatter>();
  auto text = std::make_unique<spdlog::pattern_formatter>();
  text->add_flag<TimeFlag>('*').add_flag<LevelFlag>('L').set_pattern("%* %L %n: %v");
  return text;
}

std::shared_ptr<spdlog::logger> MakeBaseLogger(spdlog::sink_ptr sink,
                                               spdlog::level::level_enum level) {
  auto logger = std::make_shared<spdlog::logger>(kBaseLoggerName, std::move(sink));
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);  // low volume; a crash must not lose the last lines
  return logger;
}

spdlog::sink_ptr DefaultSink() {
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  sink->set_formatter(MakeFormatter(LogFormat::kText));
  return sink;
}

std::shared_ptr<spdlog::logger> BaseLogger() {
  if (auto base = spdlog::get(kBaseLoggerName)) return base;
  // Used before SetupLogging: defaults (stderr, info, text). Two threads may race here; the
  // registry admits one and the loser picks up the winner's logger.
  auto base = MakeBaseLogger(DefaultSink(), spdlog::level::info);
  try {
    spdlog::register_logger(base);
    return base;
  } catch (const spdlog::spdlog_ex&) {
    return spdlog::get(kBaseLoggerName);
  }
}

bool IsKeyStart(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}
bool IsKeyChar(char c) {
  return IsKeyStart(c) || (c >= '0' && c <= '9') || c == '.' || c == '-';
}
bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Result<spdlog::level::level_enum> ParseLogLevel(std::string_view text) {
  if (text == "trace") return spdlog::level::trace;
  if (text == "debug") return spdlog::level::debug;
  if (text == "info") return spdlog::level::info;
  if (text == "warn") return spdlog::level::warn;
  if (text == "error") return spdlog::level::err;
  return MakeError(ErrorCode::kInvalidArgument,
                   "invalid log level '" + std::string(text.substr(0, 32)) +
                       "' (expected trace, debug, info, warn or error)");
}

Result<LogFormat> ParseLogFormat(std::string_view text) {
  if (text == "text") return LogFormat::kText;
  if (text == "json") return LogFormat::kJson;
  return MakeError(
      ErrorCode::kInvalidArgument,
      "invalid log format '" + std::string(text.substr(0, 32)) + "' (expected text or json)");
}

Result<LogOptions> MakeLogOptions(std::string_view level, std::string_view format) {
  LogOptions options;
  DESPOOL_ASSIGN_OR_RETURN(options.level, ParseLogLevel(level));
  DESPOOL_ASSIGN_OR_RETURN(options.format, ParseLogFormat(format));
  return options;
}

Status SetupLogging(const LogOptions& options) {
  if (options.stream != nullptr && !options.file.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "log to a stream or a file, not both");
  }
  spdlog::sink_ptr sink;
  if (options.stream != nullptr) {
    sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(*options.stream, /*force_flush=*/true);
  } else if (!options.file.empty()) {
    try {
      sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(options.file, /*truncate=*/false);
    } catch (const spdlog::spdlog_ex& e) {
      return MakeError(ErrorCode::kIo, "cannot open log file '" + options.file + "': " + e.what());
    }
  } else {
    sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  }
  sink->set_formatter(MakeFormatter(options.format));

  // Re-point every logger handed out so far (they may be cached by their users), then make
  // sure the base logger exists and is spdlog's default (so spdlog::info() lands here too).
  spdlog::apply_all([&](const std::shared_ptr<spdlog::logger>& logger) {
    logger->sinks().assign(1, sink);
    logger->set_level(options.level);
    logger->flush_on(spdlog::level::trace);
  });
  auto base = spdlog::get(kBaseLoggerName);
  if (!base) base = MakeBaseLogger(sink, options.level);
  spdlog::set_default_logger(base);
  return Status::Ok();
}

std::shared_ptr<spdlog::logger> GetLogger(std::string_view component) {
  const std::string name(component);
  if (auto logger = spdlog::get(name)) return logger;
  auto logger = BaseLogger()->clone(name);
  try {
    spdlog::register_logger(logger);
    return logger;
  } catch (const spdlog::spdlog_ex&) {
    return spdlog::get(name);  // another thread registered it first
  }
}

std::string LogQuote(std::string_view value) {
  bool plain = !value.empty();
  for (const char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (c == ' ' || c == '"' || c == '\\' || c == '=' || u < 0x20 || u == 0x7f) {
      plain = false;
      break;
    }
  }
  if (plain) return std::string(value);
  std::string out = "\"";
  for (const char c : value) {
    const auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (u < 0x20 || u == 0x7f) {
          static constexpr char kHex[] = "0123456789abcdef";
          out += "\\x";
          out += kHex[u >> 4];
          out += kHex[u & 0xf];
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

std::map<std::string, std::string> ParseLogFields(std::string_view message) {
  std::map<std::string, std::string> fields;
  std::size_t i = 0;
  const std::size_t n = message.size();
  auto skip_token = [&] {
    while (i < n && !IsSpace(message[i])) ++i;
  };
  while (i < n) {
    while (i < n && IsSpace(message[i])) ++i;
    if (i >= n) break;
    const std::size_t key_start = i;
    if (!IsKeyStart(message[i])) {
      skip_token();
      continue;
    }
    while (i < n && IsKeyChar(message[i])) ++i;
    if (i >= n || message[i] != '=') {
      skip_token();
      continue;
    }
    std::string key(message.substr(key_start, i - key_start));
    ++i;  // '='
    std::string value;
    if (i < n && message[i] == '"') {
      ++i;
      bool closed = false;
      while (i < n) {
        const char c = message[i++];
        if (c == '"') {
          closed = true;
          break;
        }
        if (c != '\\' || i >= n) {
          value += c;
          continue;
        }
        const char e = message[i++];
        switch (e) {
          case 'n':
            value += '\n';
            break;
          case 't':
            value += '\t';
            break;
          case 'r':
            value += '\r';
            break;
          case 'x':
            if (i + 1 < n && HexValue(message[i]) >= 0 && HexValue(message[i + 1]) >= 0) {
              value += static_cast<char>(HexValue(message[i]) * 16 + HexValue(message[i + 1]));
              i += 2;
            } else {
              value += "\\x";
            }
            break;
          default:
            value += e;
            break;  // \" \\ and anything else: the character itself
        }
      }
      // An unterminated quote or text glued to the closing quote is not a field.
      if (!closed || (i < n && !IsSpace(message[i]))) {
        skip_token();
        continue;
      }
    } else {
      const std::size_t value_start = i;
      skip_token();
      value = std::string(message.substr(value_start, i - value_start));
    }
    fields[std::move(key)] = std::move(value);
  }
  return fields;
}

void JsonLogFormatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  const std::string_view payload(msg.payload.data(), msg.payload.size());
  nlohmann::ordered_json line;
  line["ts"] = FormatRfc3339Ms(MsSinceEpoch(msg));
  line["level"] = LevelName(msg.level);
  line["logger"] = std::string(msg.logger_name.data(), msg.logger_name.size());
  line["msg"] = std::string(payload);
  auto fields = ParseLogFields(payload);
  if (!fields.empty()) line["fields"] = std::move(fields);
  // replace: invalid UTF-8 in a message must not throw inside the logger or break the line.
  const std::string text =
      line.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
  dest.append(text.data(), text.data() + text.size());
  dest.push_back('\n');
}

std::unique_ptr<spdlog::formatter> JsonLogFormatter::clone() const {
  return std::make_unique<JsonLogFormatter>();
}

}  // namespace despool
