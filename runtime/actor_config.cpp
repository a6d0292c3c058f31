#include "actor_config.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

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

// "a number (1.5)", "a string", ... for a field of the wrong type.
std::string describe_value(const json& value) {
  const std::string type = value.type_name();
  std::string text = type == "array" || type == "object" ? "an " + type : "a " + type;
  if (value.is_primitive() && !value.is_string()) text += " (" + value.dump() + ")";
  return text;
}

// Each field's type is checked before it is read, so that a wrong one is
// named ("field 'blob' must be a string, not a number (7)") rather than left
// to the JSON library's "type must be string, but is number".
[[noreturn]] void wrong_type(const char* key, const char* expected, const json& value) {
  bad_config(std::string("field '") + key + "' must be " + expected + ", not " + describe_value(value));
}

}  // namespace

std::string read_actor_config(const std::string& path) {
  struct stat st {};
  UniqueFd fd = open_regular_file(path, &st);
  auto too_large = [&](const std::string& size) {
    throw Error(ErrorCode::kBadBlob, path + ": " + size + " is too large for an actor config (at most " +
                                         std::to_string(kMaxActorConfigBytes) +
                                         " bytes, 1 MiB); not a zcwrap blob or actor config");
  };
  if (static_cast<uint64_t>(st.st_size) > kMaxActorConfigBytes) too_large(std::to_string(st.st_size) + " bytes");
  std::string text;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(ErrorCode::kInput, path + ": cannot read: " + errno_text(errno));
    if (n == 0) return text;
    text.append(buf, static_cast<size_t>(n));
    // The file grew since fstat: the cap holds for what is read, too.
    if (text.size() > kMaxActorConfigBytes) too_large("more than " + std::to_string(kMaxActorConfigBytes) + " bytes");
  }
}

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
  auto string_field = [&](const char* key) {
    const json& value = field(key);
    if (!value.is_string()) wrong_type(key, "a string", value);
    return value.get<std::string>();
  };
  const json& version = field("zcwrap_actor");
  if (!version.is_number_integer()) wrong_type("zcwrap_actor", "the integer 1", version);
  if (version.get<int64_t>() != kActorConfigVersion) {
    bad_config("unsupported zcwrap_actor version " + version.dump() + " (this zcwrap reads 1)");
  }
  ActorConfig c;
  std::string blob = string_field("blob");
  if (blob.find('\0') != std::string::npos) bad_config("blob: the path holds a NUL byte");
  if (!blob.empty() && blob[0] != '/' && !base_dir.empty()) blob = base_dir + "/" + blob;
  c.blob = absolute_path(blob);
  const json& size = field("blob_size");
  if (!size.is_number_integer() || (!size.is_number_unsigned() && size.get<int64_t>() < 0)) {
    wrong_type("blob_size", "a non-negative integer", size);
  }
  c.blob_size = size.get<uint64_t>();
  if (!format::parse_hex64(string_field("meta_checksum"), &c.meta_checksum)) {
    bad_config("meta_checksum is not 16 lower-case hex digits");
  }
  const json& standalone = field("standalone");
  if (!standalone.is_boolean()) wrong_type("standalone", "true or false", standalone);
  c.standalone = standalone.get<bool>();
  const json& models = field("models");
  if (!models.is_array()) wrong_type("models", "an array of model names", models);
  for (const json& name : models) {
    if (!name.is_string()) wrong_type("models", "an array of model names (strings)", name);
    c.models.push_back(name.get<std::string>());
  }
  return c;
}

}  // namespace zcwrap::detail
