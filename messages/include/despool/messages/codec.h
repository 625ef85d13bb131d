// Encoding and defensive decoding of Envelopes (see PROTOCOL.md).
//
// Decode never throws and never trusts its input: a size cap per frame, msgpack unpack limits
// on array/map/str/bin/depth, a type check on every field, and validation of ids and names per
// the contract. A bad frame yields a DecodeError whose kind says which error reply to send.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>

#include "despool/common/result.h"
#include "despool/messages/types.h"

namespace despool::msg {

struct DecodeLimits {
  std::size_t max_frame_bytes = 4u << 20;   // the application limit (error reply above it)
  std::size_t max_array = 100000;
  std::size_t max_map = 256;
  std::size_t max_str = 64u << 10;
  std::size_t max_bin = 1u << 20;
  std::size_t max_depth = 16;
};

struct DecodeError {
  ErrorKind kind = ErrorKind::kBadRequest;  // kTooLarge, kUnknownType, kUnsupportedVersion...
  std::string message;
  std::uint64_t request_id = 0;             // when it could be read, so the reply can carry it
};

// Encodes an envelope to one frame. Never fails for a valid envelope.
std::string Encode(const Envelope& envelope);

// Decodes and validates one frame. Never throws.
class DecodeResult;
DecodeResult Decode(std::span<const std::byte> frame, const DecodeLimits& limits = {});
DecodeResult Decode(std::string_view frame, const DecodeLimits& limits = {});

// Error replies. A receiver answers an undecodable frame with ErrorEnvelope(error), which
// carries the request id when the frame's "id" could be read (0 otherwise).
Envelope ErrorEnvelope(std::uint64_t request_id, ErrorKind kind, std::string message);
Envelope ErrorEnvelope(const DecodeError& error);
std::string EncodeError(const DecodeError& error);  // Encode(ErrorEnvelope(error))

class DecodeResult {
 public:
  DecodeResult(Envelope e) : v_(std::move(e)) {}       // NOLINT
  DecodeResult(DecodeError e) : v_(std::move(e)) {}    // NOLINT
  bool ok() const { return v_.index() == 0; }
  Envelope& value() { return std::get<0>(v_); }
  const DecodeError& error() const { return std::get<1>(v_); }

 private:
  std::variant<Envelope, DecodeError> v_;
};

}  // namespace despool::msg
