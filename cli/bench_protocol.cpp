// The bench driver-worker messages (bench.hpp) as JSON.
#include "bench.hpp"

#include "common.hpp"
#include "zcwrap/error.hpp"

namespace zcwrap::cli {
namespace {

using nlohmann::json;

template <typename T>
json optional_json(const std::optional<T>& value) {
  return value ? json(*value) : json(nullptr);
}

template <typename T>
std::optional<T> optional_from(const json& j, const char* key) {
  const json& value = j.at(key);
  if (value.is_null()) return std::nullopt;
  return value.get<T>();
}

}  // namespace

void to_json(json& j, const WorkerSpec& spec) {
  json loads = json::array();
  for (const ModelFile& file : spec.loads) loads.push_back({{"name", file.name}, {"path", file.path}});
  j = {{"actor", spec.actor},         {"loads", std::move(loads)},          {"input", spec.input},
       {"model", spec.model},         {"device", spec.device},              {"prefetch", std::string(prefetch_name(spec.prefetch))},
       {"fast_load", spec.fast_load}, {"threads", spec.threads},            {"calls", spec.calls},
       {"warm_up", spec.warm_up}};
}

void from_json(const json& j, WorkerSpec& spec) {
  spec.actor = j.at("actor");
  spec.loads.clear();
  for (const json& file : j.at("loads")) spec.loads.push_back({file.at("name"), file.at("path")});
  spec.input = j.at("input");
  spec.model = j.at("model");
  spec.device = j.at("device");
  spec.prefetch = parse_prefetch(j.at("prefetch").get<std::string>());
  spec.fast_load = j.at("fast_load");
  spec.threads = j.at("threads");
  spec.calls = j.at("calls");
  spec.warm_up = j.at("warm_up");
}

void to_json(json& j, const WorkerReport& report) {
  j = {{"ok", true},
       {"load_ms", report.load_ms},
       {"first_call_ms", optional_json(report.first_call_ms)},
       {"call_ms", optional_json(report.call_ms)},
       {"output", optional_json(report.output)},
       {"output_digest", optional_json(report.output_digest)},
       {"weight_bytes", report.weight_bytes},
       {"weight_bytes_in_mapping", report.weight_bytes_in_mapping},
       {"warnings", report.warnings}};
}

void from_json(const json& j, WorkerReport& report) {
  report.load_ms = j.at("load_ms");
  report.first_call_ms = optional_from<double>(j, "first_call_ms");
  report.call_ms = optional_from<double>(j, "call_ms");
  report.output = optional_from<std::string>(j, "output");
  report.output_digest = optional_from<std::string>(j, "output_digest");
  report.weight_bytes = j.at("weight_bytes");
  report.weight_bytes_in_mapping = j.at("weight_bytes_in_mapping");
  report.warnings = j.at("warnings").get<std::vector<std::string>>();
}

}  // namespace zcwrap::cli
