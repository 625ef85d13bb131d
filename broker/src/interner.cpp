#include "despool/broker/interner.h"

namespace despool::broker {

StringInterner::Id StringInterner::Acquire(std::string_view name) {
  if (auto it = index_.find(name); it != index_.end()) {
    ++entries_[it->second].refs;
    return it->second;
  }
  Id id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
    entries_[id].name.assign(name);
  } else {
    id = static_cast<Id>(entries_.size());
    entries_.push_back(Entry{std::string(name), 0});
  }
  entries_[id].refs = 1;
  index_.emplace(std::string_view(entries_[id].name), id);
  return id;
}

void StringInterner::Release(Id id) {
  Entry& e = entries_[id];
  if (e.refs == 0 || --e.refs != 0) return;
  index_.erase(std::string_view(e.name));
  e.name.clear();
  e.name.shrink_to_fit();
  free_.push_back(id);
}

std::optional<StringInterner::Id> StringInterner::Find(std::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return std::nullopt;
  return it->second;
}

}  // namespace despool::broker
