// What `zcwrap bench` prints: the JSON document (--json, documented in
// docs/BENCHMARKS.md, "bench --json") or the text table.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "bench_run.hpp"
#include "zcwrap/inspect.hpp"
#include "zcwrap/model_wrapper.hpp"

namespace zcwrap::cli {

// The command line of `zcwrap bench`. What each worker does (input, model,
// device, threads, ...) is the WorkerSpec both groups start from.
struct BenchArgs {
  std::string path;
  int workers = 4;
  std::vector<std::string> baseline;  // PATH, or NAME=PATH per model of a pipeline
  WorkerSpec worker;
  bool cold = false;
  bool concurrent = false;
  int timeout_s = 600;
  bool json = false;
};

// A finished run: what was asked, of which blob, and what both groups did.
struct BenchResult {
  const BenchArgs& args;
  const BlobInfo& blob;  // described without tensors
  std::vector<std::string> models;
  std::vector<std::string> baseline_files;
  const Group& zcwrap;
  const Group* baseline;  // null without --baseline
  std::string mismatch;   // output_mismatch()
  std::vector<std::string> warnings;
};

nlohmann::json bench_json(const BenchResult& result);
void print_bench_table(const BenchResult& result);

}  // namespace zcwrap::cli
