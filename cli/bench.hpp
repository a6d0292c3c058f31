// What `zcwrap bench` (cmd_bench.cpp) and its workers (bench_worker.cpp)
// agree on.
//
// The driver runs `/proc/self/exe bench-worker ARGS...` (a hidden
// subcommand) with a socket on fd kReportFd (worker_process.hpp). Worker
// arguments:
//   --actor JSON                 zcwrap: ModelWrapper::from_actor(JSON).unwrap(options)
//   --load NAME=PATH ...         baseline: torch::jit::load of each file, in order
//   --device DEV --prefetch P --threads T --calls K [--warm-up] [--fast-load]
//   [--input IN.pt [--model NAME]]
// The worker loads, runs K calls when given an input (each model in order,
// fed the previous one's output, or only --model), reads one byte of every
// weight page (so the memory figures count whole models), writes one JSON
// line to the socket, and then waits for EOF on it: the driver reads its
// /proc files in between. The line is {"ok": false, "code", "error"} on
// failure, otherwise:
//   {"ok": true, "load_ms", "first_call_ms", "call_ms", "output",
//    "output_digest", "weight_bytes", "weight_bytes_in_mapping", "warnings"}
// with first_call_ms / call_ms / output / output_digest null when not measured.
#pragma once

namespace CLI {
class App;
}  // namespace CLI

namespace zcwrap::cli {

constexpr const char* kBenchWorkerCommand = "bench-worker";

/// Registers the hidden `bench-worker` subcommand.
void setup_bench_worker(CLI::App& app, int& status);

}  // namespace zcwrap::cli
