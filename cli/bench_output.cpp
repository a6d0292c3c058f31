#include "bench_output.hpp"

#include <algorithm>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "common.hpp"

namespace zcwrap::cli {
namespace {

using nlohmann::json;

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
    json entry = w.report;  // its fields as the worker sent them, less "ok"
    entry.erase("ok");
    entry["pid"] = w.pid;
    entry["memory"] = memory_json(w.process);
    if (with_blob) entry["blob_mapping"] = memory_json(w.blob);
    workers.push_back(entry);
  }
  const uint64_t pss = pss_sum(g);
  json out = {{"files", g.files},
              {"page_cache_before", g.cached_before.fraction()},
              {"load_ms", stats_json(load_ms_stats(g))},
              {"first_call_ms", stats_json(first_call_ms_stats(g))},
              {"call_ms", stats_json(call_ms_stats(g))},
              {"rss_sum", rss_sum(g)},
              {"pss_sum", pss},
              {"private_sum", private_sum(g)},
              {"pss_sum_over_weight_bytes",
               weight_bytes ? static_cast<double>(pss) / static_cast<double>(weight_bytes) : 0.0},
              {"workers", workers}};
  if (with_blob) {
    const uint64_t blob_pss = blob_pss_sum(g);
    out["blob_pss_sum"] = blob_pss;
    out["other_pss_per_worker"] = (pss - std::min(pss, blob_pss)) / g.workers.size();
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

std::string opt_ms(const std::optional<double>& value) { return value ? ms_text(*value) : "-"; }

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
    return cells(opt_ms(w.report.load_ms), opt_ms(w.report.first_call_ms), human_bytes(w.process.rss),
                 human_bytes(w.process.pss), human_bytes(w.blob.pss), blob);
  };
  for (size_t i = 0; i < zc.workers.size(); ++i) {
    row(std::to_string(i), worker_cells(zc.workers[i], true), base ? worker_cells(base->workers[i], false) : "");
  }
  auto stat_cells = [](const Group& g, double Stats::*field, bool blob) {
    const auto load = load_ms_stats(g);
    const auto call = first_call_ms_stats(g);
    return cells(load ? ms_text((*load).*field) : "-", call ? ms_text((*call).*field) : "-", "", "", "", blob);
  };
  row("min", stat_cells(zc, &Stats::min, true), base ? stat_cells(*base, &Stats::min, false) : "");
  row("median", stat_cells(zc, &Stats::median, true), base ? stat_cells(*base, &Stats::median, false) : "");
  row("max", stat_cells(zc, &Stats::max, true), base ? stat_cells(*base, &Stats::max, false) : "");
  auto sum_cells = [](const Group& g, bool blob) {
    return cells("", "", human_bytes(rss_sum(g)), human_bytes(pss_sum(g)), human_bytes(blob_pss_sum(g)), blob);
  };
  row("sum", sum_cells(zc, true), base ? sum_cells(*base, false) : "");
}

}  // namespace

json bench_json(const BenchResult& r) {
  const BenchArgs& args = r.args;
  const uint64_t weight_bytes = r.blob.storage_bytes;
  const WorkerReport& first = r.zcwrap.workers.front().report;
  json out = {{"zcwrap_bench", 1},
              {"blob", r.blob.blob},
              {"models", r.models},
              {"blob_bytes", r.blob.file_size},
              {"weight_bytes", weight_bytes},
              {"storages", r.blob.storage_count},
              {"alignment", r.blob.alignment},
              {"workers", args.workers},
              {"threads", args.worker.threads},
              {"calls", args.worker.calls},
              {"prefetch", std::string(prefetch_name(args.worker.prefetch))},
              {"device", args.worker.device},
              {"fast_load", args.worker.fast_load},
              {"input", args.worker.input.empty() ? json(nullptr) : json(args.worker.input)},
              {"model", args.worker.model.empty() ? json(nullptr) : json(args.worker.model)},
              {"cold", args.cold},
              {"concurrent", args.concurrent},
              {"warm_up", args.worker.warm_up},
              {"zcwrap", group_json(r.zcwrap, true, weight_bytes)},
              {"baseline", r.baseline ? group_json(*r.baseline, false, weight_bytes) : json(nullptr)},
              {"ratios", nullptr},
              {"outputs_equal", first.output_digest ? json(r.mismatch.empty()) : json(nullptr)},
              {"warnings", r.warnings}};
  if (r.baseline) {
    const Stats zc_load = *load_ms_stats(r.zcwrap);
    const Stats base_load = *load_ms_stats(*r.baseline);
    out["ratios"] = {{"load_ms_median", base_load.median / zc_load.median},
                     {"pss_sum", static_cast<double>(pss_sum(r.zcwrap)) / static_cast<double>(pss_sum(*r.baseline))}};
    const auto zc_call = first_call_ms_stats(r.zcwrap);
    const auto base_call = first_call_ms_stats(*r.baseline);
    if (zc_call && base_call) out["ratios"]["first_call_ms_median"] = base_call->median / zc_call->median;
  }
  return out;
}

void print_bench_table(const BenchResult& r) {
  const BenchArgs& args = r.args;
  const uint64_t weight_bytes = r.blob.storage_bytes;
  const Group& zc = r.zcwrap;
  std::printf("blob      %s: %s of weights in %llu storages, alignment %s\n", r.blob.blob.c_str(),
              human_bytes(weight_bytes).c_str(), static_cast<unsigned long long>(r.blob.storage_count),
              human_bytes(r.blob.alignment).c_str());
  std::printf("workers   %d per group, %s, %d thread%s each, device %s, prefetch %s%s%s\n", args.workers,
              args.concurrent ? "started at once" : "started one after another", args.worker.threads,
              args.worker.threads == 1 ? "" : "s", args.worker.device.c_str(), std::string(prefetch_name(args.worker.prefetch)).c_str(),
              args.cold ? ", page cache emptied of the model files first (--cold)" : "",
              args.worker.warm_up ? ", LibTorch warmed up before the timed load" : "");
  std::printf("load      zcwrap: from_actor(config).unwrap()%s%s\n", args.worker.fast_load ? " with fast load" : "",
              r.baseline ? ("; torch::jit::load: " + join(r.baseline_files)).c_str() : "");
  std::printf("call      %s\n", args.worker.input.empty() ? "none (no --input)"
                                                   : ("first call on " + args.worker.input +
                                                      (args.worker.model.empty() ? std::string() : " of model " + args.worker.model))
                                                         .c_str());
  std::printf("memory    /proc/PID/smaps_rollup, read while all workers are alive and have read every weight page\n\n");
  print_table(zc, r.baseline);
  std::printf("\n");
  const uint64_t zc_pss = pss_sum(zc);
  const uint64_t blob_pss = blob_pss_sum(zc);
  const uint64_t other = (zc_pss - std::min(zc_pss, blob_pss)) / zc.workers.size();
  const char* verdict = zc.workers.size() < 2 ? "one worker" : shares_one_copy(zc) ? "one shared copy" : "NOT one shared copy";
  std::printf("sharing   zcwrap: the blob mapping's PSS sums to %s for %s of weights (%s)\n",
              human_bytes(blob_pss).c_str(), human_bytes(weight_bytes).c_str(), verdict);
  std::printf("          summed PSS %s = %sx the weights + %d x %s per worker outside the blob\n",
              human_bytes(zc_pss).c_str(), ratio_text(static_cast<double>(blob_pss) / weight_bytes).c_str(),
              args.workers, human_bytes(other).c_str());
  if (r.baseline) {
    const Stats zc_load = *load_ms_stats(zc);
    const Stats base_load = *load_ms_stats(*r.baseline);
    const uint64_t base_pss = pss_sum(*r.baseline);
    std::printf("ratios    load: torch::jit::load / unwrap = %sx (median %s ms / %s ms)\n",
                ratio_text(base_load.median / zc_load.median).c_str(), ms_text(base_load.median).c_str(),
                ms_text(zc_load.median).c_str());
    std::printf("          summed PSS: zcwrap / torch::jit::load = %s (%s / %s)\n",
                ratio_text(static_cast<double>(zc_pss) / static_cast<double>(base_pss)).c_str(),
                human_bytes(zc_pss).c_str(), human_bytes(base_pss).c_str());
  }
  const WorkerReport& first = zc.workers.front().report;
  if (first.output_digest && r.mismatch.empty()) {
    std::printf("outputs   bit-equal in all %zu workers: %s, FNV-1a %s\n",
                zc.workers.size() + (r.baseline ? r.baseline->workers.size() : 0), first.output->c_str(),
                first.output_digest->c_str());
  }
}

}  // namespace zcwrap::cli
