#include "despool/common/result.h"

#include <cerrno>
#include <cstring>

namespace despool {

const char* ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid-argument";
    case ErrorCode::kNotFound: return "not-found";
    case ErrorCode::kAlreadyExists: return "already-exists";
    case ErrorCode::kPermissionDenied: return "permission-denied";
    case ErrorCode::kResourceExhausted: return "resource-exhausted";
    case ErrorCode::kUnavailable: return "unavailable";
    case ErrorCode::kFailedPrecondition: return "failed-precondition";
    case ErrorCode::kAborted: return "aborted";
    case ErrorCode::kCorruption: return "corruption";
    case ErrorCode::kIo: return "io";
    case ErrorCode::kInternal: return "internal";
  }
  return "unknown";
}

std::string Error::ToString() const {
  return std::string(ErrorCodeName(code)) + ": " + message;
}

Error MakeError(ErrorCode code, std::string message) {
  return Error{code, std::move(message), 0};
}

Error SysError(std::string what, int err) {
  ErrorCode code = ErrorCode::kIo;
  switch (err) {
    case ENOSPC: case EDQUOT: case EMFILE: case ENFILE: case ENOMEM:
      code = ErrorCode::kResourceExhausted; break;
    case ENOENT: code = ErrorCode::kNotFound; break;
    case EEXIST: case ENOTEMPTY: code = ErrorCode::kAlreadyExists; break;
    case EACCES: case EPERM: code = ErrorCode::kPermissionDenied; break;
    case EINVAL: code = ErrorCode::kInvalidArgument; break;
    case EAGAIN: case EBUSY: code = ErrorCode::kUnavailable; break;
    default: break;
  }
  return Error{code, what + ": " + std::strerror(err), err};
}

}  // namespace despool
