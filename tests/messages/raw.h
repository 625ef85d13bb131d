// A tiny msgpack value tree for building frames the encoder would never produce: wrong types,
// missing or duplicate keys, hostile values. Start from an encoded valid message (FromFrame),
// edit it by path ("b.instructions.0.version"), and serialise it again (ToFrame).
#pragma once

#include <msgpack.hpp>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace despool::msg::testing {

struct Raw;
using RawArray = std::vector<Raw>;
using RawMap = std::vector<std::pair<std::string, Raw>>;  // ordered, duplicates allowed

struct Raw {
  std::variant<std::nullptr_t, bool, std::int64_t, std::uint64_t, double, std::string, RawArray,
               RawMap>
      v;
  Raw() : v(nullptr) {}
  Raw(std::nullptr_t) : v(nullptr) {}                          // NOLINT
  Raw(bool b) : v(b) {}                                        // NOLINT
  Raw(int i) : v(static_cast<std::int64_t>(i)) {}              // NOLINT
  Raw(std::int64_t i) : v(i) {}                                // NOLINT
  Raw(std::uint64_t u) : v(u) {}                               // NOLINT
  Raw(double d) : v(d) {}                                      // NOLINT
  Raw(const char* s) : v(std::string(s)) {}                    // NOLINT
  Raw(std::string s) : v(std::move(s)) {}                      // NOLINT
  Raw(RawArray a) : v(std::move(a)) {}                         // NOLINT
  Raw(RawMap m) : v(std::move(m)) {}                           // NOLINT

  RawMap& map() { return std::get<RawMap>(v); }
  RawArray& array() { return std::get<RawArray>(v); }

  // The value at a dotted path; numeric parts index arrays. Map parts that are missing are
  // created (as nil), so At() also adds keys.
  Raw& At(std::string_view path) {
    Raw* node = this;
    while (!path.empty()) {
      const std::size_t dot = path.find('.');
      const std::string part(path.substr(0, dot));
      path = dot == std::string_view::npos ? std::string_view() : path.substr(dot + 1);
      if (auto* a = std::get_if<RawArray>(&node->v)) {
        node = &a->at(std::stoul(part));
        continue;
      }
      RawMap& m = node->map();
      Raw* found = nullptr;
      for (auto& [k, val] : m) {
        if (k == part) found = &val;
      }
      if (found == nullptr) found = &m.emplace_back(part, Raw()).second;
      node = found;
    }
    return *node;
  }

  // Removes the key at a dotted path (the last part must name a map key).
  void Erase(std::string_view path) {
    const std::size_t dot = path.rfind('.');
    Raw& parent = dot == std::string_view::npos ? *this : At(path.substr(0, dot));
    const std::string key(dot == std::string_view::npos ? path : path.substr(dot + 1));
    RawMap& m = parent.map();
    std::erase_if(m, [&](const auto& kv) { return kv.first == key; });
  }
};

inline void Pack(msgpack::packer<msgpack::sbuffer>& pk, const Raw& r) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::nullptr_t>) {
          pk.pack_nil();
        } else if constexpr (std::is_same_v<T, RawArray>) {
          pk.pack_array(static_cast<std::uint32_t>(x.size()));
          for (const Raw& e : x) Pack(pk, e);
        } else if constexpr (std::is_same_v<T, RawMap>) {
          pk.pack_map(static_cast<std::uint32_t>(x.size()));
          for (const auto& [k, val] : x) {
            pk.pack(k);
            Pack(pk, val);
          }
        } else {
          pk.pack(x);
        }
      },
      r.v);
}

inline std::string ToFrame(const Raw& r) {
  msgpack::sbuffer buffer;
  msgpack::packer<msgpack::sbuffer> pk(buffer);
  Pack(pk, r);
  return std::string(buffer.data(), buffer.size());
}

inline Raw FromObject(const msgpack::object& o) {
  switch (o.type) {
    case msgpack::type::NIL: return Raw();
    case msgpack::type::BOOLEAN: return Raw(o.via.boolean);
    case msgpack::type::POSITIVE_INTEGER: return Raw(static_cast<std::uint64_t>(o.via.u64));
    case msgpack::type::NEGATIVE_INTEGER: return Raw(static_cast<std::int64_t>(o.via.i64));
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return Raw(o.via.f64);
    case msgpack::type::STR: return Raw(std::string(o.via.str.ptr, o.via.str.size));
    case msgpack::type::ARRAY: {
      RawArray a;
      for (std::uint32_t i = 0; i < o.via.array.size; ++i) a.push_back(FromObject(o.via.array.ptr[i]));
      return Raw(std::move(a));
    }
    case msgpack::type::MAP: {
      RawMap m;
      for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
        const msgpack::object& k = o.via.map.ptr[i].key;
        m.emplace_back(std::string(k.via.str.ptr, k.via.str.size), FromObject(o.via.map.ptr[i].val));
      }
      return Raw(std::move(m));
    }
    default: throw std::invalid_argument("FromObject: unsupported msgpack type");
  }
}

// Parses a frame the encoder produced (trusted input: test use only).
inline Raw FromFrame(const std::string& frame) {
  msgpack::object_handle handle = msgpack::unpack(frame.data(), frame.size());
  return FromObject(handle.get());
}

}  // namespace despool::msg::testing
