// What a large manifest costs a reader: time and peak memory of opening a
// blob (header, meta checksum, manifest checks) and of `zcwrap inspect`, for
// manifests of N tensors, beside a plain nlohmann::json parse of the same
// text (a JSON tree of every entry, which is what opening cost before the
// manifest was parsed in two passes).
//
//   manifest_bench OUT_DIR [--zcwrap PATH] [--tensors 10000,100000,...]
//
// Each blob holds one model whose N tensors each have their own 64-byte
// storage, named as a mixture-of-experts model names them
// ("model.layers.L.mlp.experts.E.down_proj.weight"). Each measurement runs in
// a fresh child process; its peak RSS comes from wait4's rusage.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "blob_file.hpp"
#include "format.hpp"

namespace {

namespace format = zcwrap::format;
using nlohmann::json;

std::string make_blob(const std::string& path, size_t tensors) {
  format::Manifest m;
  m.producer = "manifest_bench";
  m.alignment = 64;
  m.standalone = true;
  format::ModelEntry model;
  model.name = "model";
  model.skeleton.compression = "none";
  model.skeleton.length = model.skeleton.raw_length = 8;
  for (size_t i = 0; i < tensors; ++i) {
    m.storages.push_back({i * 64, 64, 0});
    format::TensorEntry t;
    t.path = "model.layers." + std::to_string(i / 768) + ".mlp.experts." + std::to_string(i % 256) +
             ".down_proj.weight";
    t.dtype = "float32";
    t.sizes = {4, 4};
    t.strides = {4, 1};
    t.storage = i;
    model.tensors.push_back(std::move(t));
  }
  m.models.push_back(std::move(model));
  const std::string manifest = format::manifest_to_json(m).dump();
  format::Header h;
  h.alignment = 64;
  h.manifest_offset = h.header_length;
  h.manifest_length = manifest.size();
  h.skeletons_offset = h.manifest_offset + manifest.size();
  h.skeletons_length = 8;
  format::align_up(h.skeletons_offset + h.skeletons_length, 4096, &h.data_offset);
  h.data_length = tensors * 64;
  h.file_size = h.data_offset + h.data_length;
  std::vector<uint8_t> header = format::encode_header(h);
  std::string blob(header.begin(), header.end());
  blob += manifest + "skeleton";
  blob.resize(h.file_size, '\0');
  h.meta_checksum = format::meta_checksum(reinterpret_cast<const uint8_t*>(blob.data()), h);
  header = format::encode_header(h);
  std::copy(header.begin(), header.end(), blob.begin());
  std::ofstream(path, std::ios::binary) << blob;
  return manifest;
}

struct Run {
  double seconds = 0;
  double peak_mib = 0;
  int status = 0;
};

// Runs `child` in a forked process (its standard output to /dev/null).
Run measure(const std::function<int()>& child) {
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, STDOUT_FILENO);
    ::_exit(child());
  }
  int status = 0;
  rusage usage{};
  ::wait4(pid, &status, 0, &usage);
  Run r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.peak_mib = usage.ru_maxrss / 1024.0;
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

Run exec(const std::vector<std::string>& argv) {
  return measure([&] {
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    return 127;
  });
}

// The child modes, run by exec so that no memory of the parent counts.
int child_mode(const std::string& mode, const std::string& path) {
  try {
    if (mode == "--child-open") {
      zcwrap::detail::BlobFile::open(path);
      return 0;
    }
    std::ifstream in(path, std::ios::binary);
    std::string blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const format::Header h =
        format::decode_header(reinterpret_cast<const uint8_t*>(blob.data()), blob.size(), blob.size(), path);
    const json tree = json::parse(blob.begin() + static_cast<std::ptrdiff_t>(h.manifest_offset),
                                  blob.begin() + static_cast<std::ptrdiff_t>(h.manifest_offset + h.manifest_length));
    blob = std::string();  // the text gone: what stays is the tree
    return tree.is_object() ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]).rfind("--child-", 0) == 0) return child_mode(argv[1], argv[2]);
  if (argc < 2) {
    std::fprintf(stderr, "usage: manifest_bench OUT_DIR [--zcwrap PATH] [--tensors N,N,...]\n");
    return 2;
  }
  const std::string out = argv[1];
  std::string zcwrap_bin;
  std::vector<size_t> counts = {10000, 100000, 400000, 1000000};
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--zcwrap") {
      zcwrap_bin = argv[i + 1];
    } else if (flag == "--tensors") {
      counts.clear();
      std::stringstream list(argv[i + 1]);
      for (std::string n; std::getline(list, n, ',');) counts.push_back(std::stoull(n));
    }
  }
  json rows = json::array();
  std::printf("%9s %12s | %-18s | %-18s | %-18s | %-18s\n", "tensors", "manifest MiB", "json::parse s / MiB",
              "open s / MiB", "inspect s / MiB", "inspect --json s / MiB");
  for (size_t n : counts) {
    const std::string path = out + "/manifest-" + std::to_string(n) + ".zcb";
    const size_t manifest_bytes = make_blob(path, n).size();
    const std::string self = "/proc/self/exe";
    const Run tree = exec({self, "--child-parse", path});
    const Run open = exec({self, "--child-open", path});
    Run inspect, inspect_json;
    if (!zcwrap_bin.empty()) {
      inspect = exec({zcwrap_bin, "inspect", path});
      inspect_json = exec({zcwrap_bin, "inspect", "--json", path});
    }
    const double mib = manifest_bytes / 1048576.0;
    std::printf("%9zu %12.1f | %7.2f / %8.0f | %7.2f / %8.0f | %7.2f / %8.0f | %7.2f / %8.0f%s\n", n, mib,
                tree.seconds, tree.peak_mib, open.seconds, open.peak_mib, inspect.seconds, inspect.peak_mib,
                inspect_json.seconds, inspect_json.peak_mib,
                tree.status || open.status || inspect.status || inspect_json.status ? "  (a run failed)" : "");
    std::fflush(stdout);
    auto row = [](const Run& r) { return json{{"seconds", r.seconds}, {"peak_mib", r.peak_mib}, {"status", r.status}}; };
    rows.push_back({{"tensors", n}, {"manifest_bytes", manifest_bytes}, {"json_parse", row(tree)},
                    {"open", row(open)}, {"inspect", row(inspect)}, {"inspect_json", row(inspect_json)}});
    std::remove(path.c_str());
  }
  std::ofstream(out + "/manifest.json") << rows.dump(1) << "\n";
  return 0;
}
