#include "despool/common/names.h"

#include <string>

namespace despool {
namespace {

std::string Shown(std::string_view v) {
  std::string s(v.substr(0, 80));
  for (char& c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  if (v.size() > 80) s += "...";
  return "'" + s + "'";
}

bool IsAlnum(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

Status ValidateName(std::string_view what, std::string_view v) {
  if (v.empty()) return MakeError(ErrorCode::kInvalidArgument, std::string(what) + " is empty");
  if (v.size() > 64) {
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string(what) + " " + Shown(v) + " is longer than 64 characters");
  }
  if (!IsAlnum(v[0])) {
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string(what) + " " + Shown(v) + " must start with a letter or digit");
  }
  for (char c : v) {
    if (!IsAlnum(c) && c != '.' && c != '_' && c != '-') {
      return MakeError(ErrorCode::kInvalidArgument,
                       std::string(what) + " " + Shown(v) +
                           " may only contain letters, digits, '.', '_' and '-'");
    }
  }
  return Status::Ok();  // "." and ".." cannot pass the first-character rule
}

Status ValidatePathCommon(std::string_view what, std::string_view p) {
  if (p.empty()) return MakeError(ErrorCode::kInvalidArgument, std::string(what) + " is empty");
  if (p.size() > 4096) {
    return MakeError(ErrorCode::kInvalidArgument, std::string(what) + " is longer than 4096 bytes");
  }
  if (p.find('\0') != std::string_view::npos) {
    return MakeError(ErrorCode::kInvalidArgument, std::string(what) + " contains a NUL byte");
  }
  std::size_t start = 0;
  while (start <= p.size()) {
    std::size_t end = p.find('/', start);
    if (end == std::string_view::npos) end = p.size();
    std::string_view part = p.substr(start, end - start);
    if (part == "..") {
      return MakeError(ErrorCode::kInvalidArgument,
                       std::string(what) + " " + Shown(p) + " contains a '..' component");
    }
    start = end + 1;
  }
  return Status::Ok();
}

}  // namespace

Status ValidatePackageId(std::string_view id) { return ValidateName("package id", id); }
Status ValidateDpName(std::string_view name) { return ValidateName("DP name", name); }
Status ValidateDpGroupName(std::string_view name) { return ValidateName("DP group name", name); }

Status ValidateJobId(std::string_view id) {
  if (id.empty() || id.size() > 64) {
    return MakeError(ErrorCode::kInvalidArgument, "job id " + Shown(id) + " must be 1-64 characters");
  }
  for (char c : id) {
    if (!IsAlnum(c) && c != '-') {
      return MakeError(ErrorCode::kInvalidArgument,
                       "job id " + Shown(id) + " may only contain letters, digits and '-'");
    }
  }
  return Status::Ok();
}

Status ValidateVersion(std::uint64_t version) {
  if (version > kMaxVersion) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "version " + std::to_string(version) + " is above 2^53-1");
  }
  return Status::Ok();
}

Status ValidateWorkerName(std::string_view name) {
  if (name.empty() || name.size() > 128) {
    return MakeError(ErrorCode::kInvalidArgument, "worker name must be 1-128 bytes");
  }
  for (char c : name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "worker name " + Shown(name) + " contains a control character");
    }
  }
  return Status::Ok();
}

Status ValidateSourcePath(std::string_view path) {
  DESPOOL_RETURN_IF_ERROR(ValidatePathCommon("source path", path));
  if (path[0] != '/') {
    return MakeError(ErrorCode::kInvalidArgument,
                     "source path " + Shown(path) + " must be absolute");
  }
  return Status::Ok();
}

Status ValidateRelativePath(std::string_view path) {
  DESPOOL_RETURN_IF_ERROR(ValidatePathCommon("relative path", path));
  if (path[0] == '/') {
    return MakeError(ErrorCode::kInvalidArgument, "relative path " + Shown(path) + " is absolute");
  }
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view part = path.substr(start, end - start);
    if (part.empty() || part == ".") {
      return MakeError(ErrorCode::kInvalidArgument,
                       "relative path " + Shown(path) + " has an empty or '.' component");
    }
    start = end + 1;
  }
  return Status::Ok();
}

}  // namespace despool
