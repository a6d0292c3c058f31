// The actor config: the small JSON a driver sends its workers to name a blob
// and pin it (size and meta checksum). One struct, its JSON and the rule for
// relative "blob" paths, in one place. Internal; torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace zcwrap::detail {

inline constexpr int kActorConfigVersion = 1;
// Actor configs are a few hundred bytes (a pipeline's adds its models'
// names); a larger file is refused before anything is read from it.
inline constexpr uint64_t kMaxActorConfigBytes = 1 << 20;

struct ActorConfig {
  std::string blob;  // absolute once parsed
  uint64_t blob_size = 0;
  uint64_t meta_checksum = 0;
  bool standalone = false;
  std::vector<std::string> models;
};

// {"zcwrap_actor": 1, "blob", "blob_size", "meta_checksum", "standalone",
// "models"}. With `config_dir` (the folder the config is written to), a blob
// in that same folder is named relative to it, so the two can move together.
nlohmann::json actor_config_json(const ActorConfig& config, const std::string& config_dir = "");

// Checks every field of `json` and returns the config, its blob made
// absolute: a relative "blob" is taken relative to `base_dir` (a config
// file's folder), or the current folder when that is empty. Unknown fields
// are ignored (the Python package adds its own). Throws Error(kBadBlob)
// "actor config: ...".
ActorConfig parse_actor_config(const nlohmann::json& json, const std::string& base_dir = "");

// The text of the actor config file `path`. Throws Error(kInput) when it
// cannot be read (missing, a folder, a FIFO, ...) and Error(kBadBlob) naming
// the file and the limit, before reading it, when it is larger than
// kMaxActorConfigBytes.
std::string read_actor_config(const std::string& path);

}  // namespace zcwrap::detail
