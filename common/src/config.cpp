#include "despool/common/config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <unordered_set>

#include "despool/common/duration.h"

namespace despool {
namespace config_detail {

struct Problem {
  std::uint32_t line = 0;  // 0: unknown
  std::string text;
};

struct State {
  toml::table root;
  std::string source;                           // file name for messages
  std::unordered_set<const toml::node*> known;  // values some getter asked about
  std::vector<Problem> problems;

  void Add(std::uint32_t line, std::string text) { problems.push_back({line, std::move(text)}); }
};

}  // namespace config_detail

namespace {

using config_detail::State;

const char* TypeName(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    default:
      return "nothing";
  }
}

// The first line a node was written on. Tables created implicitly (the "a" of [a.b]) have no
// source of their own: use their earliest child's.
std::uint32_t LineOf(const toml::node& node) {
  if (node.source().begin.line > 0) return node.source().begin.line;
  std::uint32_t best = 0;
  auto consider = [&best](const toml::node& child) {
    const std::uint32_t line = LineOf(child);
    if (line > 0 && (best == 0 || line < best)) best = line;
  };
  if (const auto* table = node.as_table()) {
    for (auto&& [k, v] : *table) consider(v);
  } else if (const auto* array = node.as_array()) {
    for (const auto& v : *array) consider(v);
  }
  return best;
}

std::string Join(const std::string& prefix, std::string_view key) {
  return prefix.empty() ? std::string(key) : prefix + "." + std::string(key);
}

// Appends an "unknown key" problem for every value no getter asked about.
void WalkUnknown(const State& state, const toml::table& table, const std::string& prefix,
                 std::vector<config_detail::Problem>& out) {
  for (auto&& [key, value] : table) {
    const std::string path = Join(prefix, key.str());
    if (!state.known.count(&value)) {
      const std::uint32_t line = LineOf(value);
      out.push_back({line > 0 ? line : key.source().begin.line, "unknown key '" + path + "'"});
      continue;
    }
    if (const auto* sub = value.as_table()) {
      WalkUnknown(state, *sub, path, out);
    } else if (const auto* array = value.as_array()) {
      for (std::size_t i = 0; i < array->size(); ++i) {
        const auto* element = (*array)[i].as_table();
        if (element != nullptr && state.known.count(element)) {
          WalkUnknown(state, *element, path + "[" + std::to_string(i) + "]", out);
        }
      }
    }
  }
}

std::string Truncated(std::string_view text) {
  return text.size() <= 64 ? std::string(text) : std::string(text.substr(0, 61)) + "...";
}

}  // namespace

// --- ConfigSection ---------------------------------------------------------------------------

std::string ConfigSection::PathOf(std::string_view key) const {
  return Join(path_, key);
}

bool ConfigSection::Has(std::string_view key) const {
  return table_ != nullptr && table_->get(key) != nullptr;
}

const toml::node* ConfigSection::Find(std::string_view key) {
  if (table_ == nullptr) return nullptr;
  const toml::node* node = table_->get(key);
  if (node != nullptr) state_->known.insert(node);
  return node;
}

void ConfigSection::AddError(std::string_view key, std::string_view message) {
  std::uint32_t line = 0;
  if (table_ != nullptr) {
    const toml::node* node = table_->get(key);
    line = node != nullptr ? LineOf(*node) : LineOf(*table_);
  }
  state_->Add(line, PathOf(key) + ": " + std::string(message));
}

void ConfigSection::AddTypeError(std::string_view key, const toml::node& node,
                                 std::string_view expected) {
  AddError(key, "expected " + std::string(expected) + ", got " + TypeName(node));
}

void ConfigSection::AddMissing(std::string_view key) {
  state_->Add(table_ != nullptr ? LineOf(*table_) : 0, PathOf(key) + ": missing required key");
}

bool ConfigSection::Get(std::string_view key, std::string& out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  const auto* value = node->as_string();
  if (value == nullptr) {
    AddTypeError(key, *node, "a string");
    return false;
  }
  out = value->get();
  return true;
}

bool ConfigSection::Get(std::string_view key, bool& out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  const auto* value = node->as_boolean();
  if (value == nullptr) {
    AddTypeError(key, *node, "true or false");
    return false;
  }
  out = value->get();
  return true;
}

bool ConfigSection::Get(std::string_view key, double& out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  if (const auto* f = node->as_floating_point()) {
    out = f->get();
    return true;
  }
  if (const auto* i = node->as_integer()) {
    out = static_cast<double>(i->get());
    return true;
  }
  AddTypeError(key, *node, "a number");
  return false;
}

bool ConfigSection::GetInteger(std::string_view key, std::int64_t& out, std::int64_t min,
                               std::int64_t max) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  const auto* value = node->as_integer();
  if (value == nullptr) {
    AddTypeError(key, *node, "an integer");
    return false;
  }
  const std::int64_t v = value->get();
  if (v < 0 && min == 0) {
    AddError(key, "must not be negative, got " + std::to_string(v));
    return false;
  }
  if (v < min || v > max) {
    AddError(key, "out of range [" + std::to_string(min) + ", " + std::to_string(max) +
                      "]: " + std::to_string(v));
    return false;
  }
  out = v;
  return true;
}

bool ConfigSection::Get(std::string_view key, std::chrono::milliseconds& out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  if (const auto* text = node->as_string()) {
    auto parsed = ParseDuration(text->get());
    if (!parsed.ok()) {
      AddError(key, parsed.error().message);
      return false;
    }
    out = *parsed;
    return true;
  }
  if (const auto* seconds = node->as_integer()) {  // a plain number means seconds
    const std::int64_t v = seconds->get();
    if (v < 0) {
      AddError(key, "must not be negative, got " + std::to_string(v));
      return false;
    }
    if (v > kMaxDuration.count() / 1000) {
      AddError(key, "duration too large: " + std::to_string(v) + " seconds");
      return false;
    }
    out = std::chrono::seconds(v);
    return true;
  }
  AddTypeError(key, *node, "a duration such as \"30s\"");
  return false;
}

bool ConfigSection::Get(std::string_view key, std::vector<std::string>& out) {
  const toml::node* node = Find(key);
  if (node == nullptr) return false;
  const auto* array = node->as_array();
  if (array == nullptr) {
    AddTypeError(key, *node, "an array of strings");
    return false;
  }
  std::vector<std::string> values;
  values.reserve(array->size());
  for (std::size_t i = 0; i < array->size(); ++i) {
    const auto* text = (*array)[i].as_string();
    if (text == nullptr) {
      state_->Add(LineOf((*array)[i]), PathOf(key) + "[" + std::to_string(i) +
                                           "]: expected a string, got " + TypeName((*array)[i]));
      return false;
    }
    values.push_back(text->get());
  }
  out = std::move(values);
  return true;
}

ConfigSection ConfigSection::Section(std::string_view key) {
  const toml::node* node = Find(key);
  if (node == nullptr) return ConfigSection(state_, nullptr, PathOf(key));
  const auto* table = node->as_table();
  if (table == nullptr) AddTypeError(key, *node, "a table");
  return ConfigSection(state_, table, PathOf(key));
}

std::vector<ConfigSection> ConfigSection::Sections(std::string_view key) {
  std::vector<ConfigSection> sections;
  const toml::node* node = Find(key);
  if (node == nullptr) return sections;
  const auto* array = node->as_array();
  if (array == nullptr) {
    AddTypeError(key, *node, "an array of tables ([[" + PathOf(key) + "]])");
    return sections;
  }
  for (std::size_t i = 0; i < array->size(); ++i) {
    const auto* table = (*array)[i].as_table();
    const std::string path = PathOf(key) + "[" + std::to_string(i) + "]";
    if (table == nullptr) {
      state_->Add(LineOf((*array)[i]), path + ": expected a table, got " + TypeName((*array)[i]));
      continue;
    }
    state_->known.insert(table);
    sections.push_back(ConfigSection(state_, table, path));
  }
  return sections;
}

std::vector<std::string> ConfigSection::Keys() const {
  std::vector<std::pair<std::uint32_t, std::string>> keys;
  if (table_ != nullptr) {
    for (auto&& [key, value] : *table_) keys.emplace_back(LineOf(value), std::string(key.str()));
  }
  // toml::table iterates in key order; the file's order reads better in messages and loops.
  std::stable_sort(keys.begin(), keys.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::string> names;
  names.reserve(keys.size());
  for (auto& entry : keys) names.push_back(std::move(entry.second));
  return names;
}

// --- ConfigReader ----------------------------------------------------------------------------

Result<ConfigReader> ConfigReader::Parse(std::string_view text, std::string_view source_name) {
  auto state = std::make_shared<State>();
  state->source = std::string(source_name);
  try {
    state->root = toml::parse(text, source_name);
  } catch (const toml::parse_error& e) {
    const auto& begin = e.source().begin;
    return MakeError(ErrorCode::kInvalidArgument, state->source + ":" + std::to_string(begin.line) +
                                                      ":" + std::to_string(begin.column) + ": " +
                                                      std::string(e.description()));
  }
  return ConfigReader(std::move(state));
}

Result<ConfigReader> ConfigReader::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cannot read config file '" + Truncated(path) + "'");
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cannot read config file '" + Truncated(path) + "'");
  }
  const std::string content = text.str();
  return Parse(std::string_view(content), path);
}

ConfigSection ConfigReader::Root() {
  return ConfigSection(state_, &state_->root, "");
}

Status ConfigReader::Finish() {
  std::vector<config_detail::Problem> problems = state_->problems;
  WalkUnknown(*state_, state_->root, "", problems);
  if (problems.empty()) return Status::Ok();
  std::stable_sort(problems.begin(), problems.end(),
                   [](const auto& a, const auto& b) { return a.line < b.line; });
  std::string message;
  for (const auto& p : problems) {
    if (!message.empty()) message += "; ";
    message += state_->source + ":" + (p.line > 0 ? std::to_string(p.line) + ": " : " ") + p.text;
  }
  return MakeError(ErrorCode::kInvalidArgument, message);
}

}  // namespace despool
