// The C++ half of benchmarks/manifest_bench.py (what a large manifest costs
// a reader), one job a process so that each peak RSS is that job's own:
//
//   manifest_bench --make N PATH     writes a blob whose manifest has N tensors;
//                                    prints the manifest's length in bytes
//   manifest_bench --child-parse PATH   nlohmann::json::parse of its manifest: a
//                                    JSON tree of every entry, which is what
//                                    opening a blob cost before the manifest was
//                                    parsed in passes
//   manifest_bench --child-open PATH    detail::BlobFile::open: header, meta
//                                    checksum, every manifest check
//
// The blob holds one model whose N tensors each have their own 64-byte
// storage, named as a mixture-of-experts model names them
// ("model.layers.L.mlp.experts.E.down_proj.weight").

#include <cstdio>
#include <fstream>
#include <iterator>
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
  if (argc == 4 && std::string(argv[1]) == "--make") {
    std::printf("%zu\n", make_blob(argv[3], std::stoull(argv[2])).size());
    return 0;
  }
  if (argc == 3 && std::string(argv[1]).rfind("--child-", 0) == 0) return child_mode(argv[1], argv[2]);
  std::fprintf(stderr,
               "usage: manifest_bench --make TENSORS PATH | --child-parse PATH | --child-open PATH\n"
               "(benchmarks/manifest_bench.py runs it)\n");
  return 2;
}
