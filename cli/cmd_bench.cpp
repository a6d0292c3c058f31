// zcwrap bench: start N workers that unwrap a blob (and, with --baseline,
// N that torch::jit::load the original), then report load latency and what
// each worker holds in memory, read from /proc while all are alive.
//
// Workers are this binary run again as the hidden `bench-worker`
// (bench_worker.cpp, which holds all the LibTorch code); this file stays
// torch-free.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "input_check.hpp"
#include "proc_memory.hpp"
#include "worker_process.hpp"
#include "file_util.hpp"
#include "zcwrap/zcwrap.hpp"

namespace zcwrap::cli {
namespace {

using Clock = WorkerProcess::Clock;
using nlohmann::json;

struct BenchArgs {
  std::string path;
  int workers = 4;
  std::vector<std::string> baseline;  // PATH, or NAME=PATH per model of a pipeline
  std::string input;
  std::string model;
  std::string device = "cpu";
  Prefetch prefetch = Prefetch::kNone;
  bool fast_load = false;
  int threads = 1;
  int calls = 1;
  bool cold = false;
  bool concurrent = false;
  bool warm_up = false;
  int timeout_s = 600;
  bool json = false;
};

struct WorkerResult {
  pid_t pid = -1;
  json report;          // what the worker sent (bench.hpp)
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

struct Stats {
  double min = 0, median = 0, max = 0;
};

std::optional<Stats> stats_of(const Group& g, const char* key) {
  std::vector<double> values;
  for (const WorkerResult& w : g.workers) {
    if (!w.report[key].is_null()) values.push_back(w.report[key].get<double>());
  }
  if (values.empty()) return std::nullopt;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return Stats{values.front(), n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2, values.back()};
}

template <typename Field>
uint64_t sum_of(const Group& g, Field field) {
  uint64_t total = 0;
  for (const WorkerResult& w : g.workers) total += field(w);
  return total;
}

// Shared, in PSS terms: a page mapped by k workers adds 1/k to each, so N
// workers that map one copy of the blob sum to about one worker's RSS of
// it. 10% slack for pages one touched and another did not (there should be
// none: each worker reads every page).
bool shares_one_copy(const Group& g) {
  uint64_t max_rss = 0;
  for (const WorkerResult& w : g.workers) max_rss = std::max(max_rss, w.blob.rss);
  const uint64_t pss = sum_of(g, [](const WorkerResult& w) { return w.blob.pss; });
  return max_rss > 0 && pss <= max_rss + max_rss / 10;
}

// Evicts the files from the page cache when asked, then notes how much of
// them is cached: the starting point of the first worker's load.
Residency prepare_files(const std::vector<std::string>& files, bool cold, std::vector<std::string>* warnings) {
  Residency total;
  for (const std::string& file : files) {
    const Residency r = cold ? evict_from_page_cache(file) : page_cache_residency(file);
    if (cold && r.fraction() > 0.01) {
      warnings->push_back(file + ": --cold: " + std::to_string(static_cast<int>(100 * r.fraction())) +
                          "% of it is still in the page cache after POSIX_FADV_DONTNEED (a tmpfs such as "
                          "/dev/shm cannot be evicted, nor pages another process maps)");
    }
    total.resident += r.resident;
    total.size += r.size;
  }
  return total;
}

// Starts the group's workers (one after another, each once the previous one
// reported, unless `concurrent`), then reads every worker's memory while
// all are alive, then lets them exit.
Group run_group(const std::string& label, const std::vector<std::string>& files, const BenchArgs& args,
                const std::vector<std::string>& worker_args, const FileId* blob, std::vector<std::string>* warnings) {
  if (::isatty(STDERR_FILENO)) {
    std::fprintf(stderr, "starting %d %s worker%s ...\n", args.workers, label.c_str(), args.workers == 1 ? "" : "s");
  }
  Group group{label, files, prepare_files(files, args.cold, warnings), {}};
  std::vector<WorkerProcess> processes;
  const auto deadline = Clock::now() + std::chrono::seconds(args.timeout_s);
  auto collect = [&](WorkerProcess& process) {
    json report = process.read_report(deadline);
    if (!report.value("ok", false)) {
      const int code = report.value("code", static_cast<int>(ErrorCode::kInternal));
      throw Error(static_cast<ErrorCode>(code), label + " " + process.name() + " failed: " +
                                                    report.value("error", std::string("(no message)")));
    }
    group.workers.push_back({process.pid(), std::move(report), {}, {}});
  };
  for (int i = 0; i < args.workers; ++i) {
    processes.push_back(WorkerProcess::start("worker " + std::to_string(i), worker_args));
    if (!args.concurrent) collect(processes.back());
  }
  if (args.concurrent) {
    for (WorkerProcess& process : processes) collect(process);
  }
  for (WorkerResult& w : group.workers) {
    w.process = read_smaps_rollup(w.pid);
    if (blob != nullptr) w.blob = read_file_mapping(w.pid, *blob);
  }
  for (WorkerProcess& process : processes) process.release();
  for (WorkerProcess& process : processes) {
    const std::string name = process.name();
    const int status = process.reap(std::chrono::seconds(10));
    if (status != 0) throw Error(ErrorCode::kInternal, label + " " + name + " " + wait_status_text(status) + " at exit");
  }
  return group;
}

json stats_json(const std::optional<Stats>& s) {
  if (!s) return nullptr;
  return {{"min", s->min}, {"median", s->median}, {"max", s->max}};
}

json memory_json(const MemoryUsage& m) {
  return {{"rss", m.rss},     {"pss", m.pss},   {"private", m.private_bytes()}, {"shared", m.shared_bytes()},
          {"swap", m.swap}, {"file_pmd_mapped", m.file_pmd_mapped}};
}

json group_json(const Group& g, bool with_blob, uint64_t weight_bytes) {
  json workers = json::array();
  for (const WorkerResult& w : g.workers) {
    json entry = {{"pid", w.pid}};
    for (const char* key : {"load_ms", "first_call_ms", "call_ms", "output", "output_digest", "weight_bytes",
                            "weight_bytes_in_mapping", "warnings"}) {
      entry[key] = w.report[key];
    }
    entry["memory"] = memory_json(w.process);
    if (with_blob) entry["blob_mapping"] = memory_json(w.blob);
    workers.push_back(entry);
  }
  const uint64_t pss_sum = sum_of(g, [](const WorkerResult& w) { return w.process.pss; });
  json out = {{"files", g.files},
              {"page_cache_before", g.cached_before.fraction()},
              {"load_ms", stats_json(stats_of(g, "load_ms"))},
              {"first_call_ms", stats_json(stats_of(g, "first_call_ms"))},
              {"call_ms", stats_json(stats_of(g, "call_ms"))},
              {"rss_sum", sum_of(g, [](const WorkerResult& w) { return w.process.rss; })},
              {"pss_sum", pss_sum},
              {"private_sum", sum_of(g, [](const WorkerResult& w) { return w.process.private_bytes(); })},
              {"pss_sum_over_weight_bytes",
               weight_bytes ? static_cast<double>(pss_sum) / static_cast<double>(weight_bytes) : 0.0},
              {"workers", workers}};
  if (with_blob) {
    const uint64_t blob_pss = sum_of(g, [](const WorkerResult& w) { return w.blob.pss; });
    out["blob_pss_sum"] = blob_pss;
    out["other_pss_per_worker"] = (pss_sum - std::min(pss_sum, blob_pss)) / g.workers.size();
    out["shares_one_copy"] = shares_one_copy(g);
  }
  return out;
}

// "3.10", "21.4", "4012": three significant figures are plenty for a timing.
std::string ms_text(double ms) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), ms < 10 ? "%.2f" : ms < 100 ? "%.1f" : "%.0f", ms);
  return buf;
}

// "0.21", "1.1", "162".
std::string ratio_text(double ratio) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), ratio < 1 ? "%.2f" : ratio < 10 ? "%.1f" : "%.0f", ratio);
  return buf;
}

std::string opt_ms(const json& value) { return value.is_null() ? "-" : ms_text(value.get<double>()); }

// A group's cells of one table row.
std::string cells(const std::string& load, const std::string& call, const std::string& rss, const std::string& pss,
                  const std::string& extra, bool with_extra) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "%9s %9s %10s %10s", load.c_str(), call.c_str(), rss.c_str(), pss.c_str());
  std::string out = buf;
  if (with_extra) {
    std::snprintf(buf, sizeof(buf), " %10s", extra.c_str());
    out += buf;
  }
  return out;
}

void print_table(const Group& zc, const Group* base) {
  auto row = [&](const std::string& first, const std::string& left, const std::string& right) {
    std::string line = first;
    line.resize(8, ' ');
    line += left;
    if (base) line += "  | " + right;
    line.erase(line.find_last_not_of(' ') + 1);
    std::printf("%s\n", line.c_str());
  };
  if (base) {
    std::string left = "zcwrap";
    left.resize(cells("", "", "", "", "", true).size(), ' ');
    row("", left, base->label);
  }
  row("worker", cells("load ms", "call ms", "RSS", "PSS", "blob PSS", true),
      cells("load ms", "call ms", "RSS", "PSS", "", false));
  auto worker_cells = [](const WorkerResult& w, bool blob) {
    return cells(opt_ms(w.report["load_ms"]), opt_ms(w.report["first_call_ms"]), human_bytes(w.process.rss),
                 human_bytes(w.process.pss), human_bytes(w.blob.pss), blob);
  };
  for (size_t i = 0; i < zc.workers.size(); ++i) {
    row(std::to_string(i), worker_cells(zc.workers[i], true), base ? worker_cells(base->workers[i], false) : "");
  }
  auto stat_cells = [](const Group& g, double Stats::*field, bool blob) {
    const auto load = stats_of(g, "load_ms");
    const auto call = stats_of(g, "first_call_ms");
    return cells(load ? ms_text((*load).*field) : "-", call ? ms_text((*call).*field) : "-", "", "", "", blob);
  };
  row("min", stat_cells(zc, &Stats::min, true), base ? stat_cells(*base, &Stats::min, false) : "");
  row("median", stat_cells(zc, &Stats::median, true), base ? stat_cells(*base, &Stats::median, false) : "");
  row("max", stat_cells(zc, &Stats::max, true), base ? stat_cells(*base, &Stats::max, false) : "");
  auto sum_cells = [](const Group& g, bool blob) {
    return cells("", "", human_bytes(sum_of(g, [](const WorkerResult& w) { return w.process.rss; })),
                 human_bytes(sum_of(g, [](const WorkerResult& w) { return w.process.pss; })),
                 human_bytes(sum_of(g, [](const WorkerResult& w) { return w.blob.pss; })), blob);
  };
  row("sum", sum_cells(zc, true), base ? sum_cells(*base, false) : "");
}

// Every worker of both groups gave the same output (when there was a call).
// Returns the message for the first that differs, or "".
std::string output_mismatch(const Group& zc, const Group* base) {
  const json& reference = zc.workers.front().report["output_digest"];
  if (reference.is_null()) return "";
  for (const Group* g : {&zc, base}) {
    if (g == nullptr) continue;
    for (size_t i = 0; i < g->workers.size(); ++i) {
      const json& report = g->workers[i].report;
      if (report["output_digest"] != reference) {
        return "outputs differ: " + g->label + " worker " + std::to_string(i) + " gives " +
               report["output"].get<std::string>() + " (FNV-1a " + report["output_digest"].get<std::string>() +
               "), zcwrap worker 0 gives " + zc.workers.front().report["output"].get<std::string>() + " (FNV-1a " +
               reference.get<std::string>() + ")";
      }
    }
  }
  return "";
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// The baseline's --load arguments, NAME=PATH for every model of the blob in
// pack order (the zcwrap workers map them all, so the baseline loads them
// all too), and the files.
std::vector<std::string> baseline_loads(const BenchArgs& args, const ModelWrapper& wrapper) {
  const std::vector<std::string> names = wrapper.model_names();
  if (wrapper.is_standalone_module()) {
    if (args.baseline.size() != 1) throw Error(ErrorCode::kUsage, "--baseline: give one ORIGINAL.pt for a standalone model");
    return {names.front() + "=" + args.baseline.front()};
  }
  std::vector<std::string> loads;
  for (const std::string& name : names) {
    std::string path;
    for (const std::string& spec : args.baseline) {
      const std::optional<ModelFile> file = parse_name_path(spec);
      if (!file) {
        throw Error(ErrorCode::kUsage, "--baseline " + spec + ": a pipeline needs NAME=PATH for each model (" +
                                           join(names) + ")");
      }
      if (file->name == name) path = file->path;
    }
    if (path.empty()) throw Error(ErrorCode::kUsage, "--baseline: no NAME=PATH for model '" + name + "' (models: " +
                                                         join(names) + ")");
    loads.push_back(name + "=" + path);
  }
  if (args.baseline.size() != names.size()) {
    throw Error(ErrorCode::kUsage, "--baseline: give NAME=PATH once for each model (" + join(names) + ")");
  }
  return loads;
}

void require_readable(const std::string& path) {
  if (::access(path.c_str(), R_OK) != 0) {
    throw Error(ErrorCode::kInput, path + ": cannot read: " + detail::errno_text(errno));
  }
}

int run_bench(const BenchArgs& args) {
  const ModelWrapper wrapper = ModelWrapper::open(args.path);
  const BlobInfo info = describe(args.path, {.tensors = false});
  const uint64_t weight_bytes = info.storage_bytes;
  if (!args.input.empty()) check_input_file(args.input);
  if (args.calls > 1 && args.input.empty()) throw Error(ErrorCode::kUsage, "--calls needs --input");
  if (!args.model.empty()) {
    const auto names = wrapper.model_names();
    if (std::find(names.begin(), names.end(), args.model) == names.end()) {
      throw Error(ErrorCode::kUsage, args.path + ": no model '" + args.model + "' (models: " + join(names) + ")");
    }
  }
  std::vector<std::string> common = {"--device", args.device, "--threads", std::to_string(args.threads),
                                     "--calls", std::to_string(args.calls)};
  if (!args.input.empty()) common.insert(common.end(), {"--input", args.input});
  if (!args.model.empty()) common.insert(common.end(), {"--model", args.model});
  if (args.warm_up) common.push_back("--warm-up");

  // open() names the blob by its absolute path: workers may run anywhere.
  std::vector<std::string> zc_args = {kBenchWorkerCommand, "--actor", wrapper.to_actor().dump(), "--prefetch",
                                      prefetch_name(args.prefetch)};
  if (args.fast_load) zc_args.push_back("--fast-load");
  zc_args.insert(zc_args.end(), common.begin(), common.end());
  std::vector<std::string> base_args, base_files;
  if (!args.baseline.empty()) {
    base_args = {kBenchWorkerCommand};
    for (const std::string& load : baseline_loads(args, wrapper)) {
      base_files.push_back(parse_name_path(load)->path);
      require_readable(base_files.back());
      base_args.insert(base_args.end(), {"--load", load});
    }
    base_args.insert(base_args.end(), common.begin(), common.end());
  }

  std::vector<std::string> warnings;
  const FileId blob = file_id(wrapper.blob_path());
  const Group zc = run_group("zcwrap", {wrapper.blob_path()}, args, zc_args, &blob, &warnings);
  std::optional<Group> base;
  if (!args.baseline.empty()) base = run_group("torch::jit::load", base_files, args, base_args, nullptr, &warnings);
  for (const WorkerResult& w : zc.workers) {
    for (const json& line : w.report["warnings"]) {
      const std::string text = line.get<std::string>();
      if (std::find(warnings.begin(), warnings.end(), text) == warnings.end()) warnings.push_back(text);
    }
  }
  const std::string mismatch = output_mismatch(zc, base ? &*base : nullptr);

  const auto zc_load = *stats_of(zc, "load_ms");
  const uint64_t zc_pss = sum_of(zc, [](const WorkerResult& w) { return w.process.pss; });
  if (args.json) {
    json out = {{"zcwrap_bench", 1},
                {"blob", wrapper.blob_path()},
                {"models", wrapper.model_names()},
                {"blob_bytes", info.file_size},
                {"weight_bytes", weight_bytes},
                {"storages", info.storage_count},
                {"alignment", info.alignment},
                {"workers", args.workers},
                {"threads", args.threads},
                {"calls", args.calls},
                {"prefetch", prefetch_name(args.prefetch)},
                {"device", args.device},
                {"fast_load", args.fast_load},
                {"input", args.input.empty() ? json(nullptr) : json(args.input)},
                {"model", args.model.empty() ? json(nullptr) : json(args.model)},
                {"cold", args.cold},
                {"concurrent", args.concurrent},
                {"warm_up", args.warm_up},
                {"zcwrap", group_json(zc, true, weight_bytes)},
                {"baseline", base ? group_json(*base, false, weight_bytes) : json(nullptr)},
                {"ratios", nullptr},
                {"outputs_equal", zc.workers.front().report["output_digest"].is_null() ? json(nullptr)
                                                                                       : json(mismatch.empty())},
                {"warnings", warnings}};
    if (base) {
      const auto base_load = *stats_of(*base, "load_ms");
      const uint64_t base_pss = sum_of(*base, [](const WorkerResult& w) { return w.process.pss; });
      out["ratios"] = {{"load_ms_median", base_load.median / zc_load.median},
                       {"pss_sum", static_cast<double>(zc_pss) / static_cast<double>(base_pss)}};
      const auto zc_call = stats_of(zc, "first_call_ms");
      const auto base_call = stats_of(*base, "first_call_ms");
      if (zc_call && base_call) out["ratios"]["first_call_ms_median"] = base_call->median / zc_call->median;
    }
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::printf("blob      %s: %s of weights in %llu storages, alignment %s\n", wrapper.blob_path().c_str(),
                human_bytes(weight_bytes).c_str(), static_cast<unsigned long long>(info.storage_count),
                human_bytes(info.alignment).c_str());
    std::printf("workers   %d per group, %s, %d thread%s each, device %s, prefetch %s%s%s\n", args.workers,
                args.concurrent ? "started at once" : "started one after another", args.threads,
                args.threads == 1 ? "" : "s", args.device.c_str(), prefetch_name(args.prefetch),
                args.cold ? ", page cache emptied of the model files first (--cold)" : "",
                args.warm_up ? ", LibTorch warmed up before the timed load" : "");
    std::printf("load      zcwrap: from_actor(config).unwrap()%s%s\n", args.fast_load ? " with fast load" : "",
                base ? ("; torch::jit::load: " + join(base_files)).c_str() : "");
    std::printf("call      %s\n", args.input.empty()
                                      ? "none (no --input)"
                                      : ("first call on " + args.input +
                                         (args.model.empty() ? std::string() : " of model " + args.model))
                                            .c_str());
    std::printf("memory    /proc/PID/smaps_rollup, read while all workers are alive and have read every weight page\n\n");
    print_table(zc, base ? &*base : nullptr);
    std::printf("\n");
    const uint64_t blob_pss = sum_of(zc, [](const WorkerResult& w) { return w.blob.pss; });
    const uint64_t other = (zc_pss - std::min(zc_pss, blob_pss)) / zc.workers.size();
    const char* verdict = zc.workers.size() < 2 ? "one worker" : shares_one_copy(zc) ? "one shared copy" : "NOT one shared copy";
    std::printf("sharing   zcwrap: the blob mapping's PSS sums to %s for %s of weights (%s)\n",
                human_bytes(blob_pss).c_str(), human_bytes(weight_bytes).c_str(), verdict);
    std::printf("          summed PSS %s = %sx the weights + %d x %s per worker outside the blob\n",
                human_bytes(zc_pss).c_str(), ratio_text(static_cast<double>(blob_pss) / weight_bytes).c_str(),
                args.workers, human_bytes(other).c_str());
    if (base) {
      const auto base_load = *stats_of(*base, "load_ms");
      const uint64_t base_pss = sum_of(*base, [](const WorkerResult& w) { return w.process.pss; });
      std::printf("ratios    load: torch::jit::load / unwrap = %sx (median %s ms / %s ms)\n",
                  ratio_text(base_load.median / zc_load.median).c_str(), ms_text(base_load.median).c_str(),
                  ms_text(zc_load.median).c_str());
      std::printf("          summed PSS: zcwrap / torch::jit::load = %s (%s / %s)\n",
                  ratio_text(static_cast<double>(zc_pss) / static_cast<double>(base_pss)).c_str(),
                  human_bytes(zc_pss).c_str(), human_bytes(base_pss).c_str());
    }
    if (!zc.workers.front().report["output_digest"].is_null() && mismatch.empty()) {
      std::printf("outputs   bit-equal in all %zu workers: %s, FNV-1a %s\n",
                  zc.workers.size() + (base ? base->workers.size() : 0),
                  zc.workers.front().report["output"].get<std::string>().c_str(),
                  zc.workers.front().report["output_digest"].get<std::string>().c_str());
    }
  }
  std::fflush(stdout);
  for (const std::string& w : warnings) std::fprintf(stderr, "zcwrap: warning: %s\n", w.c_str());
  if (!mismatch.empty()) throw Error(ErrorCode::kInternal, mismatch);
  return 0;
}

}  // namespace

void setup_bench(CLI::App& app, int& status) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Measure N workers unwrapping a blob: load latency, RSS and PSS, optionally against torch::jit::load");
  cmd->footer(
      "Workers are this zcwrap run again. Each loads, runs --calls calls of --input, reads every weight page, and\n"
      "stays alive until the memory of all of them is read from /proc/PID/smaps_rollup. The JSON form is\n"
      "documented in docs/BENCHMARKS.md (\"bench --json\").");
  cmd->add_option("BLOB", args->path, "A blob, or the actor config naming one")->required()->type_name("BLOB|CONFIG");
  cmd->add_option("-n,--workers", args->workers, "Worker processes per group (1 to 256)")
      ->check(CLI::Range(1, 256).description(""))
      ->type_name("N")
      ->capture_default_str();
  cmd->add_option("--baseline", args->baseline,
                  "Also run N workers that torch::jit::load the original file; for a pipeline NAME=PATH once per "
                  "model")
      ->type_name("ORIGINAL.pt");
  cmd->add_option("-i,--input", args->input, "torch.save of a tensor or tuple: each worker calls the model on it")
      ->type_name("IN.pt");
  cmd->add_option("--model", args->model, "Call only this model of a pipeline [default: each in order, fed the "
                                          "previous one's output]")
      ->type_name("NAME");
  cmd->add_option("--device", args->device, "Device to unwrap onto (cpu, cuda:N); memory figures are host memory")
      ->type_name("DEV")
      ->capture_default_str();
  add_prefetch_option(cmd, &args->prefetch);
  cmd->add_flag("--fast-load", args->fast_load,
                "zcwrap workers on cuda:N: one device buffer streamed through pinned memory (needs -Dcuda)");
  cmd->add_option("--threads", args->threads, "LibTorch intra-op threads per worker")
      ->check(CLI::Range(1, 1024).description(""))
      ->type_name("N")
      ->capture_default_str();
  cmd->add_option("--calls", args->calls, "Calls of --input per worker; the first is timed apart")
      ->check(CLI::Range(1, 1000000).description(""))
      ->type_name("K")
      ->capture_default_str();
  cmd->add_flag("--cold", args->cold,
                "Drop the model files from the page cache before each group (POSIX_FADV_DONTNEED; not on tmpfs)");
  cmd->add_flag("--concurrent", args->concurrent,
                "Start a group's workers all at once [default: one after another, so latencies are not contention]");
  cmd->add_flag("--warm-up", args->warm_up,
                "Load a tiny TorchScript module before the timed load, so LibTorch's one-time set-up (paid by\n"
                "a process's first load of anything) is left out of both groups' figures");
  cmd->add_option("--timeout", args->timeout_s, "Seconds to wait for a group's reports")
      ->check(CLI::Range(1, 86400).description(""))
      ->type_name("S")
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "Print the results as JSON");
  cmd->callback([args, &status] { status = run_bench(*args); });
  setup_bench_worker(app, status);
}

}  // namespace zcwrap::cli
