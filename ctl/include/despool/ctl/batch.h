// `despoolctl submit --file instructions.toml`: many instructions, one durable ack.
//
// Format (documented in docs/despoolctl.md):
//
//   # optional defaults for every instruction below
//   dps = ["lab1"]            dp_groups = ["eu"]
//   retry_base = "30s"        retry_max = "1h"       max_attempts = 10
//   on_exhausted = "dead"     checksum = false
//
//   [[instruction]]
//   package = "app"           version = 42           source = "/srv/src/app-42"
//   dps = ["lab1", "lab2"]    # and any of the keys above, overriding the defaults
//
// Precedence per field: the instruction's own key, then the command line's flag, then the
// file's top-level default. A relative `source` is resolved against the file's directory.
// Unknown keys, wrong types and invalid ids are errors naming the line.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "despool/common/result.h"
#include "despool/messages/types.h"

namespace despool::ctl {

// Values given on the command line, applied where an instruction does not set them.
struct InstructionDefaults {
  std::vector<std::string> dps;
  std::vector<std::string> dp_groups;
  msg::RetryPolicy policy;
  bool checksum = false;
};

// Parses and validates an instructions file's text. `base_dir` resolves relative sources.
// Errors: kInvalidArgument "<name>:<line>: <what>".
Result<std::vector<msg::Instruction>> ParseInstructions(std::string_view text, const std::string& name,
                                                        const std::string& base_dir,
                                                        const InstructionDefaults& cli);

// Reads `path` (kIo when unreadable) and parses it.
Result<std::vector<msg::Instruction>> LoadInstructions(const std::string& path, const InstructionDefaults& cli);

// Checks one instruction as despoolctl would send it: package id, version range, absolute
// source, at least one DP or group, valid DP and group names, retry_base <= retry_max.
despool::Status ValidateInstruction(const msg::Instruction& ins);

}  // namespace despool::ctl
