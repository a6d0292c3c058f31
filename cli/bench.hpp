// What `zcwrap bench` (cmd_bench.cpp) and its workers (bench_worker.cpp)
// agree on: one WorkerSpec out, one WorkerReport back.
//
// The driver runs `/proc/self/exe bench-worker SPEC` (a hidden subcommand),
// SPEC being the WorkerSpec as JSON, with a socket on fd kReportFd
// (worker_process.hpp). The worker loads, runs `calls` calls when given an
// input (each model in order, fed the previous one's output, or only
// `model`), reads one byte of every weight page (so the memory figures count
// whole models), writes its WorkerReport as one JSON line to the socket, and
// then waits for EOF on it: the driver reads its /proc files in between. A
// worker that fails sends {"ok": false, "code", "error"} instead.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "zcwrap/model_wrapper.hpp"

namespace CLI {
class App;
}  // namespace CLI

namespace zcwrap::cli {

constexpr const char* kBenchWorkerCommand = "bench-worker";

struct WorkerSpec {
  nlohmann::json actor;          // zcwrap: from_actor(actor).unwrap(...); null for a baseline worker
  std::vector<ModelFile> loads;  // baseline: torch::jit::load of each file, in order
  std::string input;             // torch.save of the call's arguments; empty: no call
  std::string model;             // call only this model of a pipeline; empty: each in order
  std::string device = "cpu";
  Prefetch prefetch = Prefetch::kNone;
  bool fast_load = false;
  int threads = 1;
  int calls = 1;
  bool warm_up = false;
};

struct WorkerReport {
  double load_ms = 0;
  std::optional<double> first_call_ms;       // with an input
  std::optional<double> call_ms;             // median of the calls after the first
  std::optional<std::string> output;         // "Float[1, 1000]"
  std::optional<std::string> output_digest;  // FNV-1a of dtype, shape and bytes
  uint64_t weight_bytes = 0;                 // distinct storages behind the modules' tensors
  uint64_t weight_bytes_in_mapping = 0;      // of which inside the blob's mapping
  std::vector<std::string> warnings;
};

void to_json(nlohmann::json& j, const WorkerSpec& spec);
void from_json(const nlohmann::json& j, WorkerSpec& spec);
void to_json(nlohmann::json& j, const WorkerReport& report);
void from_json(const nlohmann::json& j, WorkerReport& report);

/// Registers the hidden `bench-worker` subcommand.
void setup_bench_worker(CLI::App& app, int& status);

// The middle value, or the mean of the middle two; `values` is not empty.
double median(std::vector<double> values);

}  // namespace zcwrap::cli
