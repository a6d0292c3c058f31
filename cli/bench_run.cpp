#include "bench_run.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>

#include "worker_process.hpp"
#include "zcwrap/error.hpp"

namespace zcwrap::cli {
namespace {

using Clock = WorkerProcess::Clock;

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

std::optional<Stats> stats_of(const Group& g, const std::function<std::optional<double>(const WorkerReport&)>& field) {
  std::vector<double> values;
  for (const WorkerResult& w : g.workers) {
    if (const std::optional<double> value = field(w.report)) values.push_back(*value);
  }
  if (values.empty()) return std::nullopt;
  const auto [min, max] = std::minmax_element(values.begin(), values.end());
  return Stats{*min, median(values), *max};
}

uint64_t sum_of(const Group& g, uint64_t (*field)(const WorkerResult&)) {
  uint64_t total = 0;
  for (const WorkerResult& w : g.workers) total += field(w);
  return total;
}

}  // namespace

Group run_group(const std::string& label, const std::vector<std::string>& files, const WorkerSpec& spec,
                const GroupOptions& options, const FileId* blob, std::vector<std::string>* warnings) {
  if (::isatty(STDERR_FILENO)) {
    std::fprintf(stderr, "starting %d %s worker%s ...\n", options.workers, label.c_str(),
                 options.workers == 1 ? "" : "s");
  }
  Group group{label, files, prepare_files(files, options.cold, warnings), {}};
  const std::vector<std::string> args = {kBenchWorkerCommand, nlohmann::json(spec).dump()};
  std::vector<WorkerProcess> processes;
  const auto deadline = Clock::now() + std::chrono::seconds(options.timeout_s);
  auto collect = [&](WorkerProcess& process) {
    const nlohmann::json line = process.read_report(deadline);
    if (!line.value("ok", false)) {
      const int code = line.value("code", static_cast<int>(ErrorCode::kInternal));
      throw Error(static_cast<ErrorCode>(code), label + " " + process.name() + " failed: " +
                                                    line.value("error", std::string("(no message)")));
    }
    WorkerReport report;
    try {
      report = line.get<WorkerReport>();
    } catch (const nlohmann::json::exception& e) {
      throw Error(ErrorCode::kInternal, label + " " + process.name() + " sent a report without " + e.what());
    }
    group.workers.push_back({process.pid(), std::move(report), {}, {}});
  };
  for (int i = 0; i < options.workers; ++i) {
    processes.push_back(WorkerProcess::start("worker " + std::to_string(i), args));
    if (!options.concurrent) collect(processes.back());
  }
  if (options.concurrent) {
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

std::optional<Stats> load_ms_stats(const Group& g) {
  return stats_of(g, [](const WorkerReport& r) { return std::optional<double>(r.load_ms); });
}
std::optional<Stats> first_call_ms_stats(const Group& g) {
  return stats_of(g, [](const WorkerReport& r) { return r.first_call_ms; });
}
std::optional<Stats> call_ms_stats(const Group& g) {
  return stats_of(g, [](const WorkerReport& r) { return r.call_ms; });
}

uint64_t rss_sum(const Group& g) {
  return sum_of(g, [](const WorkerResult& w) { return w.process.rss; });
}
uint64_t pss_sum(const Group& g) {
  return sum_of(g, [](const WorkerResult& w) { return w.process.pss; });
}
uint64_t private_sum(const Group& g) {
  return sum_of(g, [](const WorkerResult& w) { return w.process.private_bytes(); });
}
uint64_t blob_pss_sum(const Group& g) {
  return sum_of(g, [](const WorkerResult& w) { return w.blob.pss; });
}

// Shared, in PSS terms: a page mapped by k workers adds 1/k to each, so N
// workers that map one copy of the blob sum to about one worker's RSS of
// it. 10% slack for pages one touched and another did not (there should be
// none: each worker reads every page).
bool shares_one_copy(const Group& g) {
  uint64_t max_rss = 0;
  for (const WorkerResult& w : g.workers) max_rss = std::max(max_rss, w.blob.rss);
  const uint64_t pss = blob_pss_sum(g);
  return max_rss > 0 && pss <= max_rss + max_rss / 10;
}

std::string output_mismatch(const Group& zc, const Group* base) {
  const WorkerReport& first = zc.workers.front().report;
  if (!first.output_digest) return "";
  for (const Group* g : {&zc, base}) {
    if (g == nullptr) continue;
    for (size_t i = 0; i < g->workers.size(); ++i) {
      const WorkerReport& report = g->workers[i].report;
      if (report.output_digest != first.output_digest) {
        return "outputs differ: " + g->label + " worker " + std::to_string(i) + " gives " +
               report.output.value_or("nothing") + " (FNV-1a " + report.output_digest.value_or("-") +
               "), zcwrap worker 0 gives " + *first.output + " (FNV-1a " + *first.output_digest + ")";
      }
    }
  }
  return "";
}

double median(std::vector<double> values) {
  const size_t n = values.size();
  std::nth_element(values.begin(), values.begin() + n / 2, values.end());
  const double upper = values[n / 2];
  if (n % 2) return upper;
  return (*std::max_element(values.begin(), values.begin() + n / 2) + upper) / 2;
}

}  // namespace zcwrap::cli
