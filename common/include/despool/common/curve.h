// CurveZMQ keys (docs/security.md): key pairs, key files, authorized keys with roles and grants.
//
// Key files are small TOML files holding Z85 keys (40 characters for 32 bytes):
//   PREFIX.key  (secret, mode 0600)   public = "Z85..."  secret = "Z85..."
//   PREFIX.pub  (public)              public = "Z85..."
// An authorized key (one file per key in the broker's authorized_keys_dir, named ID.toml or
// ID.pub; ID is the key id used in logs and replies) is a .pub file plus a role and grants:
//   public = "Z85..."
//   role = "publisher"            # publisher | worker | subscriber | admin
//   dps = ["dp-a", "branch-*"]    # publisher, worker: DP name globs
//   dp_groups = ["offices"]       # publisher: DP group name globs
//   packages = ["office*"]        # publisher: package id globs
//
// Contract: every loader checks what it reads (Z85 shape, decodability, secret file mode) and
// returns kInvalidArgument (config problems: callers exit 2) naming the file and the problem.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "despool/common/result.h"

namespace despool {

inline constexpr std::size_t kZ85KeyLength = 40;

struct CurveKeyPair {
  std::string public_key;  // Z85
  std::string secret_key;  // Z85
};

// True when `key` is 40 Z85 characters that decode to 32 bytes.
bool IsZ85Key(std::string_view key);
// The 32-byte binary form of a Z85 key (empty when not IsZ85Key); the Z85 form of 32 bytes.
std::string Z85Decode(std::string_view key);
std::string Z85Encode(std::string_view binary32);

// A fresh key pair (libzmq's zmq_curve_keypair, backed by libsodium).
Result<CurveKeyPair> GenerateCurveKeyPair();

// Writes PREFIX.key (created with mode 0600, never overwritten) and PREFIX.pub (0644).
// An existing PREFIX.key or PREFIX.pub is an error: keys are not replaced by accident.
Status WriteCurveKeyFiles(const std::string& prefix, const CurveKeyPair& pair);

// Reads a secret key file. Refused: not a regular file, any permission bit for group or others
// (the message says `chmod 600`), missing or malformed `secret`, a `public` that does not
// belong to the secret. The public key is derived from the secret when absent.
Result<CurveKeyPair> LoadSecretKeyFile(const std::string& path);

// Reads a public key: a file with `public = "Z85"` (a .pub or .key file), or a file holding just
// the 40 Z85 characters.
Result<std::string> LoadPublicKeyFile(const std::string& path);

enum class Role { kPublisher, kWorker, kSubscriber, kAdmin };
const char* ToString(Role role);
std::optional<Role> ParseRole(std::string_view text);

// One authorized client key and what it may do.
struct KeyGrant {
  std::string id;          // file stem (or `id` in the file); logs and error replies
  Role role = Role::kSubscriber;
  std::string public_key;  // Z85
  std::vector<std::string> dps;        // globs over DP names
  std::vector<std::string> dp_groups;  // globs over DP group names
  std::vector<std::string> packages;   // globs over package ids
};

// Shell-style glob (fnmatch without special meaning for '/' or '.'): '*', '?', '[...]'.
bool GlobMatch(std::string_view pattern, std::string_view text);
bool AnyGlobMatches(const std::vector<std::string>& patterns, std::string_view text);

// Loads every *.toml / *.pub regular file of `dir` (hidden files and others are skipped).
// `revoked` lists key ids or Z85 public keys that are skipped (and logged by the caller).
// Errors: unreadable directory, a malformed file, an unknown role, grants that do not fit the
// role (publisher needs `packages` and `dps` or `dp_groups`; worker needs `dps`; subscriber and
// admin take none), duplicate ids or duplicate public keys.
Result<std::vector<KeyGrant>> LoadAuthorizedKeys(const std::string& dir, const std::vector<std::string>& revoked);

// Client side of CURVE for a ZeroMQ socket (a `void*` from socket.handle()): the server's public
// key and our own pair. Call before connect. No-op when `server_public_key` is empty.
struct CurveClientConfig {
  std::string server_public_key;  // Z85
  CurveKeyPair own;
  bool enabled() const { return !server_public_key.empty(); }
};
Status ApplyCurveClient(void* zmq_socket, const CurveClientConfig& config);

// Builds a client config from key files: the server's public key file and our secret key file
// (both or neither: one alone is an error). Either path empty and the other too: CURVE off.
Result<CurveClientConfig> LoadCurveClientConfig(const std::string& server_key_path, const std::string& own_key_path);

}  // namespace despool
