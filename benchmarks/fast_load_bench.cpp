// fast_load_bench: how fast unwrap's fast path puts a blob's weights on a
// CUDA device, against a plain pinned cudaMemcpy of the same bytes (the
// ceiling) and against the per-storage path (use_fast_load = false).
//
// For each size it builds a blob of float32 weights (Linear-like layers of
// 4096 x 4096, plus their biases), packs it into a folder that keeps it in
// the page cache (/dev/shm when it has room), then times, each from a fresh
// mapping of the warm blob:
//   memcpy  cudaMemcpy of the whole data section from one pinned buffer
//   fast    detail::fast_load_storages (what unwrap(dev, true) does)
//   plain   one .to(device) per storage of the mapping (unwrap(dev, false))
//   unwrap  ModelWrapper::unwrap end to end, fast and plain
// and checks that the fast path's bytes equal the blob's and that the model
// gives the same output on the device as on the CPU. Built with -Dcuda only;
// scripts/gpu-check.sh runs it.
#include <sys/statvfs.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>

#include "blob_file.hpp"
#include "placement.hpp"
#include "pack.hpp"
#include "zcwrap/zcwrap.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using zcwrap::detail::BlobFile;
using zcwrap::detail::FastLoadOptions;
using zcwrap::detail::make_storages;

constexpr int64_t kWidth = 4096;  // a layer: kWidth x kWidth weight + kWidth bias, float32

struct Args {
  std::vector<double> sizes_gib = {1, 8};
  int reps = 5;
  std::string device = "cuda:0";
  std::string dir;
  std::string json_path;
  bool sweep = false;
  bool keep = false;
};

void cuda_check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorName(status) + ": " +
                             cudaGetErrorString(status));
  }
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double gbps(uint64_t bytes, double seconds) { return seconds > 0 ? double(bytes) / seconds / 1e9 : 0; }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// Fills `t` (float32, contiguous) with values in [-1/64, 1/64) that differ
// from one layer to the next, on all cores: an LCG per block.
void fill(at::Tensor& t, uint64_t seed) {
  float* data = t.data_ptr<float>();
  const int64_t n = t.numel();
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  const int64_t block = (n + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (unsigned i = 0; i < threads; ++i) {
    pool.emplace_back([=] {
      uint64_t state = seed * 0x9E3779B97F4A7C15ull + i + 1;
      for (int64_t j = i * block; j < std::min(n, (i + 1) * block); ++j) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        data[j] = (float(state >> 40) / float(1 << 24) - 0.5f) / 32.0f;
      }
    });
  }
  for (std::thread& t : pool) t.join();
}

std::string pick_dir(const Args& args, uint64_t largest_bytes) {
  if (!args.dir.empty()) return args.dir;
  struct statvfs fs {};
  if (::statvfs("/dev/shm", &fs) == 0 && uint64_t(fs.f_bavail) * fs.f_frsize > largest_bytes + (2ull << 30)) {
    return "/dev/shm";
  }
  return "/tmp";
}

// Packs `layers` layers straight from memory (no 8 GiB .pt file on the way).
std::string make_blob(const std::string& dir, int64_t layers) {
  torch::jit::Module model("FastLoadBench");
  for (int64_t i = 0; i < layers; ++i) {
    at::Tensor w = at::empty({kWidth, kWidth}, at::kFloat);
    at::Tensor b = at::empty({kWidth}, at::kFloat);
    fill(w, 2 * i + 1);
    fill(b, 2 * i + 2);
    model.register_parameter("w" + std::to_string(i), w, false);
    model.register_parameter("b" + std::to_string(i), b, false);
  }
  model.define("def forward(self, x):\n  return torch.matmul(x, self.w0) + self.b0\n");
  std::vector<zcwrap::detail::PackInput> inputs;
  inputs.push_back({"model", "fast_load_bench", zcwrap::detail::ScriptModel{std::move(model), {}, nullptr}});
  const std::string path = dir + "/zcwrap-fast-load-bench-" + std::to_string(::getpid()) + "-" +
                           std::to_string(layers) + ".zcb";
  zcwrap::detail::PreparedBlob prepared = zcwrap::detail::prepare_blob(inputs, zcwrap::Layout::kStandalone, {});
  zcwrap::detail::write_blob(prepared, path);
  return path;
}

// The ceiling: one cudaMemcpy of the data section from pinned memory into a
// preallocated device buffer. Returns seconds per rep.
std::vector<double> time_pinned_memcpy(const BlobFile& blob, int reps) {
  const uint64_t n = blob.header().data_length;
  void* host = nullptr;
  void* device = nullptr;
  cuda_check(cudaHostAlloc(&host, n, cudaHostAllocDefault), "cudaHostAlloc");
  std::memcpy(host, blob.data_section(), n);
  cuda_check(cudaMalloc(&device, n), "cudaMalloc");
  cuda_check(cudaMemcpy(device, host, n, cudaMemcpyHostToDevice), "cudaMemcpy");  // warm-up
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    cuda_check(cudaMemcpy(device, host, n, cudaMemcpyHostToDevice), "cudaMemcpy");
    times.push_back(seconds_since(start));
  }
  cuda_check(cudaFree(device), "cudaFree");
  cuda_check(cudaFreeHost(host), "cudaFreeHost");
  return times;
}

// Whether every storage on the device holds the blob's bytes.
bool same_bytes(const BlobFile& blob, const std::vector<c10::Storage>& storages, const c10::Device& device) {
  for (size_t i = 0; i < storages.size(); ++i) {
    const uint64_t n = blob.manifest().storages[i].nbytes;
    if (n == 0) continue;
    at::Tensor bytes = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(device))
                           .set_(storages[i], 0, {int64_t(n)}, {1})
                           .cpu();
    if (std::memcmp(bytes.data_ptr(), blob.storage_data(i), n) != 0) return false;
  }
  return true;
}

// The per-storage path: unwrap(device, false)'s own (placement.hpp).
std::vector<c10::Storage> plain_storages(const std::shared_ptr<const BlobFile>& blob, const c10::Device& device) {
  std::vector<c10::Storage> out = make_storages(blob, device, /*use_fast_load=*/false);
  cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  return out;
}

struct Timed {
  double first = 0;              // the first rep: pins staging buffers, allocates
  std::vector<double> steady;    // the others

  // Rep `r` took `seconds`.
  void add(int r, double seconds) {
    if (r == 0) {
      first = seconds;
    } else {
      steady.push_back(seconds);
    }
  }
};

Timed time_fast(const std::string& path, const c10::Device& device, const FastLoadOptions& options, int reps,
                bool* verified) {
  Timed t;
  for (int r = 0; r < reps + 1; ++r) {
    auto blob = BlobFile::open(path);
    const auto start = Clock::now();
    std::vector<c10::Storage> storages = zcwrap::detail::fast_load_storages(*blob, device, options);
    t.add(r, seconds_since(start));
    if (r == 0 && verified != nullptr) *verified = same_bytes(*blob, storages, device);
  }
  return t;
}

Timed time_plain(const std::string& path, const c10::Device& device, int reps) {
  Timed t;
  for (int r = 0; r < reps + 1; ++r) {
    auto blob = BlobFile::open(path);
    const auto start = Clock::now();
    std::vector<c10::Storage> storages = plain_storages(blob, device);
    t.add(r, seconds_since(start));
  }
  return t;
}

Timed time_unwrap(const std::string& path, const std::string& device, bool fast, int reps) {
  Timed t;
  const zcwrap::ModelWrapper wrapper = zcwrap::ModelWrapper::open(path);
  for (int r = 0; r < reps + 1; ++r) {
    const auto start = Clock::now();
    zcwrap::Unwrapped u = wrapper.unwrap(device, fast);
    cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    t.add(r, seconds_since(start));
  }
  return t;
}

// Output of the device model (fast and plain) against the CPU one.
json check_outputs(const std::string& path, const std::string& device) {
  const zcwrap::ModelWrapper wrapper = zcwrap::ModelWrapper::open(path);
  torch::NoGradGuard no_grad;
  at::Tensor x = at::linspace(-1, 1, kWidth, at::kFloat).reshape({1, kWidth});
  zcwrap::Unwrapped cpu = wrapper.unwrap("cpu");
  zcwrap::Unwrapped fast = wrapper.unwrap(device, true);
  zcwrap::Unwrapped plain = wrapper.unwrap(device, false);
  const at::Tensor ref = cpu.module().forward({x}).toTensor();
  const at::Tensor out_fast = fast.module().forward({x.to(c10::Device(device))}).toTensor().cpu();
  const at::Tensor out_plain = plain.module().forward({x.to(c10::Device(device))}).toTensor().cpu();
  return {{"fast_equals_plain", at::equal(out_fast, out_plain)},
          {"fast_close_to_cpu", at::allclose(out_fast, ref, 1e-3, 1e-4)},
          {"max_abs_diff_vs_cpu", (out_fast - ref).abs().max().item<double>()}};
}

std::string fmt(double v, int digits = 1) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << v;
  return s.str();
}

json device_info(const c10::Device& device) {
  cudaDeviceProp prop{};
  cuda_check(cudaGetDeviceProperties(&prop, device.has_index() ? device.index() : 0), "cudaGetDeviceProperties");
  int driver = 0, runtime = 0;
  cuda_check(cudaDriverGetVersion(&driver), "cudaDriverGetVersion");
  cuda_check(cudaRuntimeGetVersion(&runtime), "cudaRuntimeGetVersion");
  return {{"gpu", prop.name},
          {"cuda_driver_api", driver},
          {"cuda_runtime", runtime},
          {"torch", TORCH_VERSION},
          {"host_threads", std::thread::hardware_concurrency()}};
}

int run(const Args& args) {
  const c10::Device device(args.device);
  if (!device.is_cuda() || !zcwrap::detail::load_cuda_backend() || !torch::cuda::is_available()) {
    std::fprintf(stderr, "fast_load_bench: no CUDA device (%s): nothing to measure\n", args.device.c_str());
    return 77;
  }
  if (!zcwrap::detail::fast_load_built()) {
    std::fprintf(stderr, "fast_load_bench: zcwrap was built without its CUDA loader\n");
    return 1;
  }
  json report = {{"machine", device_info(device)}, {"reps", args.reps}, {"sizes", json::array()}};
  std::cout << "# fast load to " << args.device << ": " << report["machine"]["gpu"].get<std::string>()
            << ", torch " << TORCH_VERSION << "\n";
  const double largest = *std::max_element(args.sizes_gib.begin(), args.sizes_gib.end());
  const std::string dir = pick_dir(args, uint64_t(largest * (1ull << 30)));
  std::cout << "blobs in " << dir << "; GB/s = 1e9 bytes/s of the data section; median of " << args.reps
            << " reps after a first one\n\n";
  const FastLoadOptions defaults;
  std::cout << "| blob | storages | memcpy GB/s | fast GB/s (first) | plain GB/s | fast/memcpy | fast/plain "
               "| unwrap fast s | unwrap plain s | bytes ok | outputs ok |\n"
               "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (double gib : args.sizes_gib) {
    const int64_t layers = std::max<int64_t>(1, int64_t(gib * (1ull << 30) / (kWidth * kWidth * 4) + 0.5));
    auto start = Clock::now();
    const std::string path = make_blob(dir, layers);
    const double make_s = seconds_since(start);
    uint64_t bytes;
    size_t storages;
    std::vector<double> memcpy_s;
    {
      auto blob = BlobFile::open(path);
      bytes = blob->header().data_length;
      storages = blob->manifest().storages.size();
      memcpy_s = time_pinned_memcpy(*blob, args.reps);
    }
    bool verified = false;
    const Timed fast = time_fast(path, device, defaults, args.reps, &verified);
    const Timed plain = time_plain(path, device, args.reps);
    const Timed unwrap_fast = time_unwrap(path, args.device, true, args.reps);
    const Timed unwrap_plain = time_unwrap(path, args.device, false, std::min(args.reps, 3));
    const json outputs = check_outputs(path, args.device);
    const double memcpy_gbps = gbps(bytes, median(memcpy_s));
    const double fast_gbps = gbps(bytes, median(fast.steady));
    const double plain_gbps = gbps(bytes, median(plain.steady));
    const bool outputs_ok = outputs["fast_equals_plain"].get<bool>() && outputs["fast_close_to_cpu"].get<bool>();
    json row = {{"gib", gib},
                {"bytes", bytes},
                {"storages", storages},
                {"make_blob_s", make_s},
                {"memcpy_s", memcpy_s},
                {"fast_first_s", fast.first},
                {"fast_s", fast.steady},
                {"plain_first_s", plain.first},
                {"plain_s", plain.steady},
                {"unwrap_fast_s", unwrap_fast.steady},
                {"unwrap_plain_s", unwrap_plain.steady},
                {"memcpy_gbps", memcpy_gbps},
                {"fast_gbps", fast_gbps},
                {"fast_first_gbps", gbps(bytes, fast.first)},
                {"plain_gbps", plain_gbps},
                {"fast_vs_memcpy", memcpy_gbps > 0 ? fast_gbps / memcpy_gbps : 0},
                {"fast_vs_plain", plain_gbps > 0 ? fast_gbps / plain_gbps : 0},
                {"bytes_verified", verified},
                {"outputs", outputs}};
    report["sizes"].push_back(row);
    std::cout << "| " << fmt(double(bytes) / (1ull << 30), 2) << " GiB | " << storages << " | " << fmt(memcpy_gbps)
              << " | " << fmt(fast_gbps) << " (" << fmt(gbps(bytes, fast.first)) << ") | " << fmt(plain_gbps)
              << " | " << fmt(100 * row["fast_vs_memcpy"].get<double>(), 0) << "% | "
              << fmt(row["fast_vs_plain"].get<double>(), 1) << "x | " << fmt(median(unwrap_fast.steady), 3)
              << " | " << fmt(median(unwrap_plain.steady), 3) << " | " << (verified ? "yes" : "NO") << " | "
              << (outputs_ok ? "yes" : "NO") << " |" << std::endl;

    if (args.sweep && gib == args.sizes_gib.front()) {
      json sweep = json::array();
      std::ostringstream table;
      table << "\nsweep on the " << fmt(double(bytes) / (1ull << 30), 2)
            << " GiB blob (median GB/s):\n\n| chunk MiB | buffers | threads | fast GB/s |\n|---|---|---|---|\n";
      for (uint64_t chunk_mib : {8, 16, 32, 64}) {
        for (unsigned buffers : {2u, 4u}) {
          for (unsigned threads : {4u, 8u, 16u}) {
            FastLoadOptions o;
            o.chunk_bytes = chunk_mib << 20;
            o.buffers = buffers;
            o.threads = threads;
            const double g = gbps(bytes, median(time_fast(path, device, o, 3, nullptr).steady));
            sweep.push_back({{"chunk_mib", chunk_mib}, {"buffers", buffers}, {"threads", threads}, {"gbps", g}});
            table << "| " << chunk_mib << " | " << buffers << " | " << threads << " | " << fmt(g) << " |\n";
          }
        }
      }
      report["sweep"] = sweep;
      std::cout << table.str() << "\n";
    }
    if (!args.keep) ::unlink(path.c_str());
    if (!verified || !outputs_ok) report["failed"] = true;
  }
  std::cout << "\nfast = unwrap's fast path for the storages (default options: "
            << (defaults.chunk_bytes >> 20) << " MiB chunks, " << defaults.buffers << " buffers, "
            << zcwrap::detail::fill_threads(defaults) << " fill threads); first = the first load in the "
            << "process, which also pins the staging buffers and grows LibTorch's caching allocator.\n";
  if (!args.json_path.empty()) {
    std::ofstream out(args.json_path);
    out << report.dump(2) << "\n";
  }
  return report.contains("failed") ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  CLI::App app("fast_load_bench: GB/s of zcwrap's fast load to CUDA vs pinned cudaMemcpy and the per-storage path",
               "fast_load_bench");
  app.add_option("--sizes-gib", args.sizes_gib, "Blob sizes to measure, in GiB")->delimiter(',')->capture_default_str();
  app.add_option("--reps", args.reps, "Timed repetitions after the first")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_option("--device", args.device, "CUDA device")->capture_default_str();
  app.add_option("--dir", args.dir, "Folder for the blobs (default /dev/shm when it has room, else /tmp)");
  app.add_option("--json", args.json_path, "Also write the results as JSON here");
  app.add_flag("--sweep", args.sweep, "Also try chunk sizes, buffer and thread counts on the first size");
  app.add_flag("--keep", args.keep, "Keep the blobs");
  CLI11_PARSE(app, argc, argv);
  try {
    return run(args);
  } catch (const std::exception& e) {
    std::string message = e.what();
    std::fprintf(stderr, "fast_load_bench: error: %s\n", message.substr(0, message.find('\n')).c_str());
    return 1;
  }
}
