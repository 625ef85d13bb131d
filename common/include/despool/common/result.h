// Result<T> and Status: the error type at every module boundary.
//
// g++ 12 has no std::expected, so this is a deliberately small stand-in: a value or an Error
// (a code plus a human-readable message). Callers must check ok() before value(); value() on
// an error aborts in debug builds (assert) because that is a programming mistake, not a
// runtime condition.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace despool {

// Broad error classes. Modules add detail in the message, not new codes, unless a caller
// needs to branch on the difference.
enum class ErrorCode {
  kInvalidArgument,   // bad input from a caller or a peer (validation failures)
  kNotFound,          // unknown id, missing file
  kAlreadyExists,
  kPermissionDenied,
  kResourceExhausted, // disk full, too many watches, over a size limit
  kUnavailable,       // peer unreachable, timeout: try again later
  kFailedPrecondition,// state does not allow the operation (e.g. filesystem lacks a feature)
  kAborted,           // cancelled or superseded
  kCorruption,        // stored data or a message that cannot be trusted
  kIo,                // an OS call failed
  kInternal,          // a bug
};

const char* ErrorCodeName(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
  int sys_errno = 0;  // errno of the failing OS call, 0 when not an OS error

  std::string ToString() const;
};

Error MakeError(ErrorCode code, std::string message);
// An Error from errno: "<what>: <strerror(err)>", classed by errno (ENOSPC -> kResourceExhausted...).
Error SysError(std::string what, int err);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}      // NOLINT: implicit by design

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const { assert(!ok()); return std::get<1>(v_); }
  Error&& take_error() { assert(!ok()); return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

// Status: Result without a value.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT: implicit by design
  static Status Ok() { return Status(); }

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { assert(!ok_); return error_; }
  Error&& take_error() { assert(!ok_); return std::move(error_); }
  std::string ToString() const { return ok_ ? "OK" : error_.ToString(); }

 private:
  Error error_;
  bool ok_ = true;
};

}  // namespace despool

// Propagate an error from a Status or Result expression out of the current function.
#define DESPOOL_RETURN_IF_ERROR(expr)               \
  do {                                              \
    auto despool_status_ = (expr);                  \
    if (!despool_status_.ok()) return despool_status_.take_error(); \
  } while (0)

#define DESPOOL_CONCAT_INNER_(a, b) a##b
#define DESPOOL_CONCAT_(a, b) DESPOOL_CONCAT_INNER_(a, b)
// DESPOOL_ASSIGN_OR_RETURN(auto x, Foo()); — x gets the value or the error is returned.
#define DESPOOL_ASSIGN_OR_RETURN(lhs, expr) \
  DESPOOL_ASSIGN_OR_RETURN_IMPL_(DESPOOL_CONCAT_(despool_result_, __LINE__), lhs, expr)
#define DESPOOL_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.take_error();             \
  lhs = std::move(tmp).value()
