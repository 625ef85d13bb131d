// libFuzzer target for the decoder (scripts/fuzz builds it with clang; replay_main.cpp runs
// the committed seed corpus through it in every ctest run).
//
// Beyond "never crash, never throw": whatever decodes must be a fixed point of the codec —
// encoding it and decoding again gives the same envelope and the same bytes.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "despool/messages/codec.h"

namespace {

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "decode_fuzz: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using despool::msg::Decode;
  using despool::msg::Encode;
  const std::string_view frame(reinterpret_cast<const char*>(data), size);
  despool::msg::DecodeResult result = Decode(frame);
  if (!result.ok()) {
    if (result.error().message.empty()) Die("a decode error without a message");
    // The error reply for it must itself be a valid message.
    if (!Decode(despool::msg::EncodeError(result.error())).ok()) Die("undecodable error reply");
    return 0;
  }
  const std::string encoded = Encode(result.value());
  despool::msg::DecodeResult again = Decode(encoded);
  if (!again.ok()) Die("a decoded message does not survive re-encoding");
  if (!(again.value() == result.value())) Die("re-decoding changed the message");
  if (Encode(again.value()) != encoded) Die("re-encoding is not stable");
  return 0;
}
