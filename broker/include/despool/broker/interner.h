// Small integer ids for the DP and package names that many jobs share: a million parked jobs
// spread over a few thousand DPs and a few hundred packages hold a 32-bit id each instead of a
// std::string. Ids are reference counted and reused once a name is no longer referenced, so a
// long-lived broker does not accumulate every package name it ever saw.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace despool::broker {

class StringInterner {
 public:
  using Id = std::uint32_t;

  // The id of `name`, adding it if needed; takes one reference.
  Id Acquire(std::string_view name);
  // Drops one reference taken by Acquire; the name is forgotten (its id reused) at zero.
  void Release(Id id);
  // The id of `name` if it is currently held, without taking a reference.
  std::optional<Id> Find(std::string_view name) const;
  const std::string& Name(Id id) const { return entries_[id].name; }
  // Names currently held.
  std::size_t size() const { return index_.size(); }

 private:
  struct Entry {
    std::string name;
    std::uint32_t refs = 0;
  };
  // A deque: entries never move, so the index can key on views of their names.
  std::deque<Entry> entries_;
  std::vector<Id> free_;
  std::unordered_map<std::string_view, Id> index_;
};

}  // namespace despool::broker
