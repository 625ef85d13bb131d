// TOML configuration files (toml++ 3.3) with typed getters and unknown-key detection.
//
// Usage:
//   DESPOOL_ASSIGN_OR_RETURN(auto config, ConfigReader::Load(path));   // syntax errors here
//   ConfigSection root = config.Root();
//   root.Get("frontend", settings.frontend);                  // std::string
//   ConfigSection retry = root.Section("retry");              // [retry]
//   retry.Get("base", settings.retry_base);                   // std::chrono::milliseconds
//   retry.Get("max_attempts", settings.max_attempts, [](const std::uint32_t& n) {
//     return n >= 1 ? Status::Ok() : MakeError(ErrorCode::kInvalidArgument, "must be >= 1");
//   });
//   ConfigSection groups = root.Section("dp_groups");        // free-form keys
//   for (const std::string& name : groups.Keys()) groups.Get(name, settings.groups[name]);
//   for (ConfigSection dp : root.Sections("dp")) {           // [[dp]]
//     dp.Require("name", entry.name);  dp.Require("root", entry.root);
//   }
//   DESPOOL_RETURN_IF_ERROR(config.Finish());                 // unknown keys + bad values
//
// Contract:
// - A getter leaves `out` untouched when the key is absent (so defaults set beforehand stay)
//   and returns true only when it stored a value. A present key of the wrong type or with an
//   invalid value records an error and leaves `out` untouched.
// - Every key a getter, Section or Sections was asked about counts as known; Finish() reports
//   every key in the file that was never asked about ("unknown key") plus all recorded errors.
// - Errors are kInvalidArgument, one line each, "<file>:<line>: <key path>: <problem>", e.g.
//   "broker.toml:12: retry.base: invalid duration 'soon': ..." or
//   "broker.toml:3: unknown key 'fronted'"; several are joined with "; ". Key paths use dots
//   for tables and [i] for array elements ("dp[1].root"). Callers exit 2 on them.
// - Types: std::string; bool; any integral type (range-checked: a negative value for an
//   unsigned type is "must not be negative"); double (integer or float);
//   std::chrono::milliseconds (a duration string per duration.h, or an integer = seconds);
//   std::vector<std::string> (array of strings).
// - Not thread-safe; a reader and its sections are used by one thread while loading.
#pragma once

#include <chrono>
#include <concepts>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "despool/common/result.h"

namespace toml {
inline namespace v3 {
class node;
class table;
}  // namespace v3
}  // namespace toml

namespace despool {

namespace config_detail {
struct State;
}

class ConfigSection {
 public:
  bool Get(std::string_view key, std::string& out);
  bool Get(std::string_view key, bool& out);
  bool Get(std::string_view key, double& out);
  bool Get(std::string_view key, std::chrono::milliseconds& out);
  bool Get(std::string_view key, std::vector<std::string>& out);
  template <typename T>
  requires(std::integral<T> && !std::same_as<T, bool>) bool Get(std::string_view key, T& out) {
    std::int64_t value = 0;
    if (!GetInteger(key, value, IntMin<T>(), IntMax<T>())) return false;
    out = static_cast<T>(value);
    return true;
  }

  // Get, then `check(value)` (returning Status); a failed check is recorded as an error naming
  // the key and line, and `out` stays untouched.
  template <typename T, typename Check>
  bool Get(std::string_view key, T& out, Check&& check) {
    T value = out;
    if (!Get(key, value)) return false;
    Status status = std::forward<Check>(check)(std::as_const(value));
    if (!status.ok()) {
      AddError(key, status.error().message);
      return false;
    }
    out = std::move(value);
    return true;
  }

  // Like Get, but an absent key is an error ("missing required key").
  template <typename T, typename... Check>
  bool Require(std::string_view key, T& out, Check&&... check) {
    if (!Has(key)) {
      AddMissing(key);
      return false;
    }
    return Get(key, out, std::forward<Check>(check)...);
  }

  // True when the key is present (does not mark it known).
  bool Has(std::string_view key) const;

  // The sub-table `key` ([retry], or an inline table). Absent: an empty section whose getters
  // find nothing. Present but not a table: an error, and an empty section.
  ConfigSection Section(std::string_view key);
  // The array of tables `key` ([[dp]]). Absent: empty. Not an array of tables: an error.
  std::vector<ConfigSection> Sections(std::string_view key);
  // This table's keys in file order, for tables whose keys are names ([dp_groups]). Listing
  // does not mark them known: read each with a getter.
  std::vector<std::string> Keys() const;

  // Records an error about `key` of this section at the key's line (or the table's line when
  // the key is absent), for checks a program makes across several keys.
  void AddError(std::string_view key, std::string_view message);
  // "retry.base" for key "base" of section [retry].
  std::string PathOf(std::string_view key) const;

 private:
  friend class ConfigReader;
  ConfigSection(std::shared_ptr<config_detail::State> state, const toml::table* table,
                std::string path)
      : state_(std::move(state)), table_(table), path_(std::move(path)) {}

  template <typename T>
  static constexpr std::int64_t IntMin() {
    if constexpr (std::is_unsigned_v<T>) {
      return 0;
    } else {
      return static_cast<std::int64_t>(std::numeric_limits<T>::min());
    }
  }
  template <typename T>
  static constexpr std::int64_t IntMax() {
    if constexpr (sizeof(T) >= sizeof(std::int64_t)) {
      return std::numeric_limits<std::int64_t>::max();
    } else {
      return static_cast<std::int64_t>(std::numeric_limits<T>::max());
    }
  }

  bool GetInteger(std::string_view key, std::int64_t& out, std::int64_t min, std::int64_t max);
  // The value of `key`, marked known; null when absent.
  const toml::node* Find(std::string_view key);
  void AddTypeError(std::string_view key, const toml::node& node, std::string_view expected);
  void AddMissing(std::string_view key);

  std::shared_ptr<config_detail::State> state_;
  const toml::table* table_ = nullptr;  // null: absent section
  std::string path_;                    // "" for the root
};

class ConfigReader {
 public:
  // Reads and parses a file. Unreadable file or TOML syntax error: kInvalidArgument
  // "<file>:<line>:<column>: <problem>".
  static Result<ConfigReader> Load(const std::string& path);
  // Parses text; `source_name` names it in messages (e.g. the file name).
  static Result<ConfigReader> Parse(std::string_view text, std::string_view source_name);

  ConfigSection Root();
  // All recorded errors plus every key never asked about. Call once, after reading.
  Status Finish();

 private:
  explicit ConfigReader(std::shared_ptr<config_detail::State> state) : state_(std::move(state)) {}
  std::shared_ptr<config_detail::State> state_;
};

}  // namespace despool
