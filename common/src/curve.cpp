#include "despool/common/curve.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "despool/common/config.h"

namespace despool {
namespace {

namespace fs = std::filesystem;

Error Invalid(const std::string& message) { return Error{ErrorCode::kInvalidArgument, message}; }

std::string Trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(first, last - first + 1));
}

// Reads a whole (small) file through an open descriptor; also returns its stat.
Result<std::string> ReadFd(int fd, const std::string& path) {
  std::string text;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Invalid("key file '" + path + "': read: " + std::strerror(errno));
    }
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > 64 * 1024) return Invalid("key file '" + path + "': too large for a key file");
  }
  return text;
}

struct OpenedFile {
  std::string text;
  struct stat st {};
};

Result<OpenedFile> ReadKeyFile(const std::string& path) {
  // O_NOFOLLOW + fstat: the mode we check is the mode of the file we read.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return Invalid("key file '" + path + "': " + std::strerror(errno));
  OpenedFile f;
  if (::fstat(fd, &f.st) != 0) {
    const int e = errno;
    ::close(fd);
    return Invalid("key file '" + path + "': stat: " + std::strerror(e));
  }
  if (!S_ISREG(f.st.st_mode)) {
    ::close(fd);
    return Invalid("key file '" + path + "': not a regular file");
  }
  auto text = ReadFd(fd, path);
  ::close(fd);
  if (!text.ok()) return text.take_error();
  f.text = std::move(text).value();
  return f;
}

Status CheckKey(std::string_view key, const std::string& what) {
  if (!IsZ85Key(key)) {
    return Invalid(what + ": expected a CURVE key of " + std::to_string(kZ85KeyLength) + " Z85 characters");
  }
  return Status::Ok();
}

std::string PublicFromSecret(const std::string& secret_z85) {
  char pub[kZ85KeyLength + 1] = {};
  if (zmq_curve_public(pub, secret_z85.c_str()) != 0) return {};
  return std::string(pub, kZ85KeyLength);
}

Status WriteNewFile(const std::string& path, const std::string& text, mode_t mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) return Invalid("cannot create '" + path + "': " + std::strerror(errno));
  // The umask may only remove bits; make the mode exact.
  bool ok = ::fchmod(fd, mode) == 0;
  std::size_t done = 0;
  while (ok && done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ok = false;
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  ok = ok && ::fsync(fd) == 0;
  const int e = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(path.c_str());
    return Invalid("cannot write '" + path + "': " + std::strerror(e));
  }
  return Status::Ok();
}

Status CheckStringList(const std::vector<std::string>& v) {
  for (const auto& p : v) {
    if (p.empty() || p.size() > 128) return Invalid("patterns must be 1 to 128 characters");
  }
  return Status::Ok();
}

}  // namespace

bool IsZ85Key(std::string_view key) {
  if (key.size() != kZ85KeyLength) return false;
  return !Z85Decode(key).empty();
}

std::string Z85Decode(std::string_view key) {
  if (key.size() != kZ85KeyLength) return {};
  const std::string z(key);
  std::string out(32, '\0');
  if (zmq_z85_decode(reinterpret_cast<std::uint8_t*>(out.data()), z.c_str()) == nullptr) return {};
  // zmq_z85_decode does not reject every character outside the alphabet: round-trip to be sure.
  char back[kZ85KeyLength + 1] = {};
  if (zmq_z85_encode(back, reinterpret_cast<const std::uint8_t*>(out.data()), 32) == nullptr) return {};
  if (z != back) return {};
  return out;
}

std::string Z85Encode(std::string_view binary32) {
  if (binary32.size() != 32) return {};
  char out[kZ85KeyLength + 1] = {};
  if (zmq_z85_encode(out, reinterpret_cast<const std::uint8_t*>(binary32.data()), 32) == nullptr) return {};
  return std::string(out, kZ85KeyLength);
}

Result<CurveKeyPair> GenerateCurveKeyPair() {
  if (zmq_has("curve") != 1) return Error{ErrorCode::kInternal, "this libzmq has no CURVE support"};
  char pub[kZ85KeyLength + 1] = {};
  char sec[kZ85KeyLength + 1] = {};
  if (zmq_curve_keypair(pub, sec) != 0) {
    return Error{ErrorCode::kInternal, std::string("zmq_curve_keypair: ") + zmq_strerror(zmq_errno())};
  }
  return CurveKeyPair{std::string(pub, kZ85KeyLength), std::string(sec, kZ85KeyLength)};
}

Status WriteCurveKeyFiles(const std::string& prefix, const CurveKeyPair& pair) {
  DESPOOL_RETURN_IF_ERROR(CheckKey(pair.public_key, "public key"));
  DESPOOL_RETURN_IF_ERROR(CheckKey(pair.secret_key, "secret key"));
  const std::string key_path = prefix + ".key", pub_path = prefix + ".pub";
  std::error_code ec;
  if (fs::exists(pub_path, ec)) return Invalid("'" + pub_path + "' exists: not replacing a key");
  DESPOOL_RETURN_IF_ERROR(WriteNewFile(
      key_path,
      "# despool CURVE secret key: keep it private (mode 0600); never copy it to the broker.\n"
      "public = \"" + pair.public_key + "\"\nsecret = \"" + pair.secret_key + "\"\n",
      0600));
  if (Status st = WriteNewFile(pub_path,
                               "# despool CURVE public key. To authorize it, copy this file into the broker's\n"
                               "# authorized_keys_dir as ID.toml and add role (and grants): see docs/security.md.\n"
                               "public = \"" + pair.public_key + "\"\n",
                               0644);
      !st.ok()) {
    ::unlink(key_path.c_str());
    return st;
  }
  return Status::Ok();
}

Result<CurveKeyPair> LoadSecretKeyFile(const std::string& path) {
  DESPOOL_ASSIGN_OR_RETURN(auto file, ReadKeyFile(path));
  if ((file.st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(file.st.st_mode & 07777));
    return Invalid("secret key file '" + path + "' has mode " + mode +
                   ": it must not be accessible by group or others (chmod 600 '" + path + "')");
  }
  DESPOOL_ASSIGN_OR_RETURN(auto reader, ConfigReader::Parse(file.text, path));
  ConfigSection root = reader.Root();
  CurveKeyPair pair;
  root.Require("secret", pair.secret_key, [](const std::string& v) { return CheckKey(v, "secret key"); });
  root.Get("public", pair.public_key, [](const std::string& v) { return CheckKey(v, "public key"); });
  DESPOOL_RETURN_IF_ERROR(reader.Finish());
  const std::string derived = PublicFromSecret(pair.secret_key);
  if (derived.empty()) return Invalid("secret key file '" + path + "': cannot derive the public key");
  if (!pair.public_key.empty() && pair.public_key != derived) {
    return Invalid("secret key file '" + path + "': 'public' does not belong to 'secret'");
  }
  pair.public_key = derived;
  return pair;
}

Result<std::string> LoadPublicKeyFile(const std::string& path) {
  DESPOOL_ASSIGN_OR_RETURN(auto file, ReadKeyFile(path));
  const std::string bare = Trim(file.text);
  if (IsZ85Key(bare)) return bare;
  DESPOOL_ASSIGN_OR_RETURN(auto reader, ConfigReader::Parse(file.text, path));
  ConfigSection root = reader.Root();
  std::string key, ignored;
  root.Require("public", key, [](const std::string& v) { return CheckKey(v, "public key"); });
  root.Get("secret", ignored);  // a .key file names its public key too
  root.Get("role", ignored);    // an authorized-key file too
  for (const char* list : {"dps", "dp_groups", "packages"}) {
    std::vector<std::string> v;
    root.Get(list, v);
  }
  root.Get("id", ignored);
  DESPOOL_RETURN_IF_ERROR(reader.Finish());
  return key;
}

const char* ToString(Role role) {
  switch (role) {
    case Role::kPublisher: return "publisher";
    case Role::kWorker: return "worker";
    case Role::kSubscriber: return "subscriber";
    case Role::kAdmin: return "admin";
  }
  return "?";
}

std::optional<Role> ParseRole(std::string_view text) {
  for (Role r : {Role::kPublisher, Role::kWorker, Role::kSubscriber, Role::kAdmin}) {
    if (text == ToString(r)) return r;
  }
  return std::nullopt;
}

bool GlobMatch(std::string_view pattern, std::string_view text) {
  const std::string p(pattern), t(text);
  return ::fnmatch(p.c_str(), t.c_str(), 0) == 0;
}

bool AnyGlobMatches(const std::vector<std::string>& patterns, std::string_view text) {
  return std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) { return GlobMatch(p, text); });
}

Result<std::vector<KeyGrant>> LoadAuthorizedKeys(const std::string& dir, const std::vector<std::string>& revoked) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) return Invalid("authorized_keys_dir '" + dir + "': " + ec.message());
  struct stat dst {};
  if (::stat(dir.c_str(), &dst) == 0 && (dst.st_mode & S_IWOTH) != 0) {
    return Invalid("authorized_keys_dir '" + dir + "' is writable by others: anyone could authorize a key");
  }
  std::vector<fs::path> files;
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    const fs::path& p = it->path();
    const std::string name = p.filename().string();
    if (name.empty() || name[0] == '.') continue;
    if (p.extension() != ".toml" && p.extension() != ".pub") continue;
    files.push_back(p);
  }
  if (ec) return Invalid("authorized_keys_dir '" + dir + "': " + ec.message());
  std::sort(files.begin(), files.end());
  const std::set<std::string> revoked_set(revoked.begin(), revoked.end());
  std::vector<KeyGrant> grants;
  std::map<std::string, std::string> by_id, by_key;  // -> file
  for (const fs::path& p : files) {
    const std::string path = p.string();
    DESPOOL_ASSIGN_OR_RETURN(auto file, ReadKeyFile(path));
    if ((file.st.st_mode & S_IWOTH) != 0) return Invalid("authorized key '" + path + "' is writable by others");
    DESPOOL_ASSIGN_OR_RETURN(auto reader, ConfigReader::Parse(file.text, path));
    ConfigSection root = reader.Root();
    KeyGrant g;
    g.id = p.stem().string();
    root.Get("id", g.id, [](const std::string& v) {
      return v.empty() || v.size() > 64 ? Invalid("must be 1 to 64 characters") : Status::Ok();
    });
    root.Require("public", g.public_key, [](const std::string& v) { return CheckKey(v, "public key"); });
    std::string role_text;
    if (root.Require("role", role_text)) {
      if (auto r = ParseRole(role_text)) {
        g.role = *r;
      } else {
        root.AddError("role", "unknown role '" + role_text + "' (publisher, worker, subscriber or admin)");
      }
    }
    const bool has_dps = root.Get("dps", g.dps, CheckStringList);
    const bool has_groups = root.Get("dp_groups", g.dp_groups, CheckStringList);
    const bool has_packages = root.Get("packages", g.packages, CheckStringList);
    switch (g.role) {
      case Role::kPublisher:
        if (!has_packages) root.AddError("packages", "a publisher needs 'packages' (package id globs)");
        if (!has_dps && !has_groups) root.AddError("dps", "a publisher needs 'dps' and/or 'dp_groups'");
        break;
      case Role::kWorker:
        if (!has_dps) root.AddError("dps", "a worker needs 'dps' (the DPs it may serve)");
        if (has_groups || has_packages) root.AddError("role", "a worker takes only 'dps' as a grant");
        break;
      case Role::kSubscriber:
      case Role::kAdmin:
        if (has_dps || has_groups || has_packages) {
          root.AddError("role", std::string("a ") + ToString(g.role) + " key takes no grants");
        }
        break;
    }
    DESPOOL_RETURN_IF_ERROR(reader.Finish());
    if (revoked_set.count(g.id) || revoked_set.count(g.public_key)) continue;
    if (auto [at, fresh] = by_id.emplace(g.id, path); !fresh) {
      return Invalid("authorized key id '" + g.id + "' used by both '" + at->second + "' and '" + path + "'");
    }
    if (auto [at, fresh] = by_key.emplace(g.public_key, path); !fresh) {
      return Invalid("the same public key is authorized twice: '" + at->second + "' and '" + path + "'");
    }
    grants.push_back(std::move(g));
  }
  return grants;
}

Status ApplyCurveClient(void* zmq_socket, const CurveClientConfig& config) {
  if (!config.enabled()) return Status::Ok();
  const std::string server = Z85Decode(config.server_public_key);
  const std::string pub = Z85Decode(config.own.public_key);
  const std::string sec = Z85Decode(config.own.secret_key);
  if (server.empty() || pub.empty() || sec.empty()) return Invalid("malformed CURVE key");
  if (zmq_setsockopt(zmq_socket, ZMQ_CURVE_SERVERKEY, server.data(), server.size()) != 0 ||
      zmq_setsockopt(zmq_socket, ZMQ_CURVE_PUBLICKEY, pub.data(), pub.size()) != 0 ||
      zmq_setsockopt(zmq_socket, ZMQ_CURVE_SECRETKEY, sec.data(), sec.size()) != 0) {
    return Error{ErrorCode::kInternal, std::string("CURVE socket options: ") + zmq_strerror(zmq_errno())};
  }
  return Status::Ok();
}

Result<CurveClientConfig> LoadCurveClientConfig(const std::string& server_key_path, const std::string& own_key_path) {
  CurveClientConfig c;
  if (server_key_path.empty() && own_key_path.empty()) return c;
  if (server_key_path.empty() || own_key_path.empty()) {
    return Invalid("CURVE needs both the broker's public key (curve_server_key) and our own secret key (curve_key)");
  }
  DESPOOL_ASSIGN_OR_RETURN(c.server_public_key, LoadPublicKeyFile(server_key_path));
  DESPOOL_ASSIGN_OR_RETURN(c.own, LoadSecretKeyFile(own_key_path));
  return c;
}

}  // namespace despool
