// zcwrap bench's measurement: a group of N workers that load a model the
// same way, started and measured while all are alive, and the figures
// computed from them. Torch-free: the workers hold the LibTorch code.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "bench.hpp"
#include "proc_memory.hpp"

namespace zcwrap::cli {

struct WorkerResult {
  pid_t pid = -1;
  WorkerReport report;  // what the worker sent
  MemoryUsage process;  // smaps_rollup: the whole process
  MemoryUsage blob;     // the blob's mapping only (zcwrap workers)
};

// One set of N workers that load the model the same way.
struct Group {
  std::string label;  // "zcwrap", "torch::jit::load"
  std::vector<std::string> files;
  Residency cached_before;  // of files, summed, just before the first worker starts
  std::vector<WorkerResult> workers;
};

struct GroupOptions {
  int workers = 4;
  bool cold = false;        // evict `files` from the page cache first
  bool concurrent = false;  // start all workers at once
  int timeout_s = 600;      // for all the group's reports
};

// Evicts the files from the page cache when asked (warnings for what stays),
// starts the workers with `spec` (one after another, each once the previous
// one reported, unless concurrent), reads every worker's memory (and that of
// the mapping of `blob`, when given) while all are alive, then lets them
// exit. Throws Error naming the worker that failed.
Group run_group(const std::string& label, const std::vector<std::string>& files, const WorkerSpec& spec,
                const GroupOptions& options, const FileId* blob, std::vector<std::string>* warnings);

struct Stats {
  double min = 0, median = 0, max = 0;
};

// Over the workers that measured it; nullopt when none did.
std::optional<Stats> load_ms_stats(const Group& g);
std::optional<Stats> first_call_ms_stats(const Group& g);
std::optional<Stats> call_ms_stats(const Group& g);

uint64_t rss_sum(const Group& g);
uint64_t pss_sum(const Group& g);
uint64_t private_sum(const Group& g);
uint64_t blob_pss_sum(const Group& g);

// Whether the group's blob mappings add up to one copy in PSS terms.
bool shares_one_copy(const Group& g);

// Every worker of both groups gave the same output (when there was a call).
// Returns the message for the first that differs, or "".
std::string output_mismatch(const Group& zc, const Group* base);

}  // namespace zcwrap::cli
