#include "actor_config.hpp"

#include <nlohmann/json.hpp>

#include "zcwrap/error.hpp"
#include "file_util.hpp"
#include "format.hpp"

namespace zcwrap::detail {
namespace {

using nlohmann::json;

[[noreturn]] void bad_config(const std::string& what) {
  throw Error(ErrorCode::kBadBlob, "actor config: " + what);
}

}  // namespace

json actor_config_json(const ActorConfig& config, const std::string& config_dir) {
  std::string blob = config.blob;
  if (!config_dir.empty() && parent_dir(blob) == config_dir) {
    blob = blob.substr(config_dir.size() + (config_dir == "/" ? 0 : 1));
  }
  return {{"zcwrap_actor", kActorConfigVersion},
          {"blob", blob},
          {"blob_size", config.blob_size},
          {"meta_checksum", format::hex64(config.meta_checksum)},
          {"standalone", config.standalone},
          {"models", config.models}};
}

ActorConfig parse_actor_config(const json& config, const std::string& base_dir) {
  if (!config.is_object()) bad_config("expected a JSON object");
  auto field = [&](const char* key) -> const json& {
    auto it = config.find(key);
    if (it == config.end()) bad_config(std::string("missing field '") + key + "'");
    return *it;
  };
  const json& version = field("zcwrap_actor");
  if (!version.is_number_integer() || version.get<int64_t>() != kActorConfigVersion) {
    bad_config("unsupported zcwrap_actor version " + version.dump() + " (this zcwrap reads 1)");
  }
  ActorConfig c;
  try {
    std::string blob = field("blob").get<std::string>();
    if (blob.find('\0') != std::string::npos) bad_config("blob: the path holds a NUL byte");
    if (!blob.empty() && blob[0] != '/' && !base_dir.empty()) blob = base_dir + "/" + blob;
    c.blob = absolute_path(blob);
    const json& size = field("blob_size");
    if (!size.is_number_integer() || (!size.is_number_unsigned() && size.get<int64_t>() < 0)) {
      bad_config("blob_size is not a non-negative integer");
    }
    c.blob_size = size.get<uint64_t>();
    if (!format::parse_hex64(field("meta_checksum").get<std::string>(), &c.meta_checksum)) {
      bad_config("meta_checksum is not 16 lower-case hex digits");
    }
    c.standalone = field("standalone").get<bool>();
    c.models = field("models").get<std::vector<std::string>>();
  } catch (const json::exception& e) {
    bad_config(std::string("a field has the wrong type: ") + e.what());
  }
  return c;
}

}  // namespace zcwrap::detail
