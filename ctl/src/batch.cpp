#include "despool/ctl/batch.h"

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <toml++/toml.h>

#include "despool/common/duration.h"
#include "despool/common/names.h"

namespace despool::ctl {
namespace {

namespace fs = std::filesystem;

const std::set<std::string, std::less<>> kPolicyKeys{"dps",          "dp_groups",    "retry_base", "retry_max",
                                                    "max_attempts", "on_exhausted", "checksum"};

class Reader {
 public:
  explicit Reader(std::string name) : name_(std::move(name)) {}

  Error At(const toml::node& node, const std::string& what) const {
    return MakeError(ErrorCode::kInvalidArgument,
                     name_ + ":" + std::to_string(node.source().begin.line) + ": " + what);
  }
  Error AtLine(std::uint32_t line, const std::string& what) const {
    return MakeError(ErrorCode::kInvalidArgument, name_ + ":" + std::to_string(line) + ": " + what);
  }

  Result<std::string> String(const toml::node& node, const std::string& key) const {
    if (auto v = node.value<std::string>(); v && node.is_string()) return *v;
    return At(node, key + " must be a string");
  }

  Result<std::vector<std::string>> Strings(const toml::node& node, const std::string& key) const {
    const auto* arr = node.as_array();
    if (!arr) return At(node, key + " must be an array of strings");
    std::vector<std::string> out;
    for (const auto& item : *arr) {
      if (!item.is_string()) return At(item, key + " must be an array of strings");
      out.push_back(*item.value<std::string>());
    }
    return out;
  }

  Result<std::uint64_t> Millis(const toml::node& node, const std::string& key) const {
    if (node.is_string()) {
      auto d = ParseDuration(*node.value<std::string>());
      if (!d.ok()) return At(node, key + ": " + d.error().message);
      return static_cast<std::uint64_t>(d->count());
    }
    if (node.is_integer()) {
      const auto v = *node.value<std::int64_t>();
      if (v < 0) return At(node, key + " must not be negative");
      return static_cast<std::uint64_t>(v) * 1000;  // a plain number means seconds
    }
    return At(node, key + " must be a duration such as \"30s\"");
  }

  // Applies one policy key (shared by the top level and each instruction).
  despool::Status Policy(const std::string& key, const toml::node& node, std::optional<std::vector<std::string>>& dps,
                         std::optional<std::vector<std::string>>& groups, msg::RetryPolicy& policy,
                         std::optional<bool>& checksum) const {
    if (key == "dps") {
      DESPOOL_ASSIGN_OR_RETURN(dps, Strings(node, key));
    } else if (key == "dp_groups") {
      DESPOOL_ASSIGN_OR_RETURN(groups, Strings(node, key));
    } else if (key == "retry_base") {
      DESPOOL_ASSIGN_OR_RETURN(policy.retry_base_ms, Millis(node, key));
    } else if (key == "retry_max") {
      DESPOOL_ASSIGN_OR_RETURN(policy.retry_max_ms, Millis(node, key));
    } else if (key == "max_attempts") {
      if (!node.is_integer()) return At(node, "max_attempts must be an integer");
      const auto v = *node.value<std::int64_t>();
      if (v < 1 || v > 1000000) return At(node, "max_attempts must be between 1 and 1000000");
      policy.max_attempts = static_cast<std::uint32_t>(v);
    } else if (key == "on_exhausted") {
      DESPOOL_ASSIGN_OR_RETURN(auto s, String(node, key));
      msg::OnExhausted p;
      if (!msg::ParseOnExhausted(s, &p)) return At(node, "on_exhausted must be \"dead\" or \"force\"");
      policy.on_exhausted = p;
    } else if (key == "checksum") {
      if (!node.is_boolean()) return At(node, "checksum must be true or false");
      checksum = *node.value<bool>();
    }
    return {};
  }

 private:
  std::string name_;
};

template <typename T>
void Fill(std::optional<T>& into, const std::optional<T>& from) {
  if (!into && from) into = from;
}

}  // namespace

despool::Status ValidateInstruction(const msg::Instruction& ins) {
  if (ins.kind == msg::JobKind::kRefresh) {
    DESPOOL_RETURN_IF_ERROR(ValidatePackageId(ins.package));
    DESPOOL_RETURN_IF_ERROR(ValidateVersion(ins.version));
    DESPOOL_RETURN_IF_ERROR(ValidateSourcePath(ins.source));
  }
  if (ins.dps.empty() && ins.dp_groups.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "no --dp or --dp-group given for package " + ins.package);
  }
  for (const auto& dp : ins.dps) DESPOOL_RETURN_IF_ERROR(ValidateDpName(dp));
  for (const auto& g : ins.dp_groups) DESPOOL_RETURN_IF_ERROR(ValidateDpGroupName(g));
  const auto& p = ins.policy;
  if (p.retry_base_ms && *p.retry_base_ms == 0) {
    return MakeError(ErrorCode::kInvalidArgument, "retry_base must be greater than 0");
  }
  if (p.retry_base_ms && p.retry_max_ms && *p.retry_base_ms > *p.retry_max_ms) {
    return MakeError(ErrorCode::kInvalidArgument, "retry_base must not exceed retry_max");
  }
  if (p.max_attempts && *p.max_attempts == 0) {
    return MakeError(ErrorCode::kInvalidArgument, "max_attempts must be at least 1");
  }
  return {};
}

Result<std::vector<msg::Instruction>> ParseInstructions(std::string_view text, const std::string& name,
                                                        const std::string& base_dir,
                                                        const InstructionDefaults& cli) {
  toml::table root;
  try {
    root = toml::parse(text, std::string_view(name));
  } catch (const toml::parse_error& e) {
    return MakeError(ErrorCode::kInvalidArgument, name + ":" + std::to_string(e.source().begin.line) + ": " +
                                                      std::string(e.description()));
  }
  Reader rd(name);

  std::optional<std::vector<std::string>> file_dps, file_groups;
  msg::RetryPolicy file_policy;
  std::optional<bool> file_checksum;
  const toml::array* list = nullptr;
  for (const auto& [k, node] : root) {
    const std::string key(k.str());
    if (key == "instruction") {
      list = node.as_array();
      if (!list) return rd.At(node, "instruction must be an array of tables ([[instruction]])");
    } else if (kPolicyKeys.count(key)) {
      DESPOOL_RETURN_IF_ERROR(rd.Policy(key, node, file_dps, file_groups, file_policy, file_checksum));
    } else {
      return rd.At(node, "unknown key '" + key + "'");
    }
  }
  if (!list || list->empty()) {
    return MakeError(ErrorCode::kInvalidArgument, name + ": no [[instruction]] tables");
  }

  std::vector<msg::Instruction> out;
  for (const auto& item : *list) {
    const auto* t = item.as_table();
    if (!t) return rd.At(item, "instruction must be a table");
    const std::uint32_t line = item.source().begin.line;
    msg::Instruction ins;
    std::optional<std::vector<std::string>> dps, groups;
    std::optional<bool> checksum;
    bool have_package = false, have_version = false, have_source = false;
    for (const auto& [k, node] : *t) {
      const std::string key(k.str());
      if (key == "package") {
        DESPOOL_ASSIGN_OR_RETURN(ins.package, rd.String(node, key));
        if (auto s = ValidatePackageId(ins.package); !s.ok()) return rd.At(node, s.error().message);
        have_package = true;
      } else if (key == "version") {
        if (!node.is_integer()) return rd.At(node, "version must be an integer");
        const auto v = *node.value<std::int64_t>();
        if (v < 0) return rd.At(node, "version must not be negative");
        ins.version = static_cast<std::uint64_t>(v);
        if (auto s = ValidateVersion(ins.version); !s.ok()) return rd.At(node, s.error().message);
        have_version = true;
      } else if (key == "source") {
        DESPOOL_ASSIGN_OR_RETURN(auto src, rd.String(node, key));
        fs::path p(src);
        if (p.is_relative()) p = fs::path(base_dir) / p;
        ins.source = p.lexically_normal().string();
        if (ins.source.size() > 1 && ins.source.back() == '/') ins.source.pop_back();
        if (auto s = ValidateSourcePath(ins.source); !s.ok()) return rd.At(node, s.error().message);
        have_source = true;
      } else if (kPolicyKeys.count(key)) {
        DESPOOL_RETURN_IF_ERROR(rd.Policy(key, node, dps, groups, ins.policy, checksum));
      } else {
        return rd.At(node, "unknown key '" + key + "' in [[instruction]]");
      }
    }
    if (!have_package) return rd.AtLine(line, "instruction without package");
    if (!have_version) return rd.AtLine(line, "instruction without version");
    if (!have_source) return rd.AtLine(line, "instruction without source");
    // Instruction's own keys, then the command line, then the file's defaults.
    if (!dps && !groups) {
      if (!cli.dps.empty() || !cli.dp_groups.empty()) {
        dps = cli.dps;
        groups = cli.dp_groups;
      } else {
        dps = file_dps;
        groups = file_groups;
      }
    }
    ins.dps = dps.value_or(std::vector<std::string>{});
    ins.dp_groups = groups.value_or(std::vector<std::string>{});
    Fill(ins.policy.retry_base_ms, cli.policy.retry_base_ms);
    Fill(ins.policy.retry_base_ms, file_policy.retry_base_ms);
    Fill(ins.policy.retry_max_ms, cli.policy.retry_max_ms);
    Fill(ins.policy.retry_max_ms, file_policy.retry_max_ms);
    Fill(ins.policy.max_attempts, cli.policy.max_attempts);
    Fill(ins.policy.max_attempts, file_policy.max_attempts);
    Fill(ins.policy.on_exhausted, cli.policy.on_exhausted);
    Fill(ins.policy.on_exhausted, file_policy.on_exhausted);
    ins.checksum = checksum.value_or(cli.checksum || file_checksum.value_or(false));
    if (auto s = ValidateInstruction(ins); !s.ok()) return rd.AtLine(line, s.error().message);
    out.push_back(std::move(ins));
  }
  return out;
}

Result<std::vector<msg::Instruction>> LoadInstructions(const std::string& path, const InstructionDefaults& cli) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return SysError("cannot read instructions file " + path, errno);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return SysError("cannot read instructions file " + path, errno);
  const auto dir = fs::absolute(fs::path(path)).parent_path().string();
  return ParseInstructions(ss.str(), path, dir, cli);
}

}  // namespace despool::ctl
