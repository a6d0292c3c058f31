// Loading a TorchScript file for packing without copying its tensors. Internal.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <torch/script.h>

#include "file_util.hpp"

namespace caffe2::serialize {
class ReadAdapterInterface;
}  // namespace caffe2::serialize

namespace zcwrap::detail {

// A model file opened once for packing: its descriptor (from which pack
// copies storages file to file) and a read-only mapping of it (which mapped
// storages point into). Every read of the file goes through these.
struct ModelSource {
  std::string path;
  UniqueFd fd;
  MappedRegion region;
};

// Opens and maps `path`. Throws Error(kInput) when it cannot be read or is
// not a regular file.
std::shared_ptr<const ModelSource> open_model_source(const std::string& path);

// A LibTorch reader of the mapped bytes (PyTorchStreamReader, torch::jit::load).
std::shared_ptr<caffe2::serialize::ReadAdapterInterface> read_adapter(std::shared_ptr<const ModelSource> source);

// Loads `source` with every tensor whose record is at least 8 bytes pointing
// into a read-only mapping of the file (kept alive by the tensors), and the
// graph constants of frozen methods already moved to buffers. Returns
// nullopt for archives this path does not handle (quantized tensors, custom
// classes, __setstate__, anything whose storages it cannot account for): load
// those with torch::jit::load. Throws what torch::jit::load throws.
std::optional<torch::jit::Module> load_mapped(const std::shared_ptr<const ModelSource>& source,
                                              torch::jit::ExtraFilesMap& extra_files);

struct ZipEntry {
  uint16_t method = 0;
  uint64_t compressed = 0;
  uint64_t size = 0;
};

// The zip central directory of the `n` bytes at `base`: record name (without
// the archive's folder) -> method and sizes. (TorchScript writers set the
// data-descriptor flag, so local headers hold no sizes.) Every read is
// bounds-checked, for any `n`; an archive it cannot read gives an empty map.
std::map<std::string, ZipEntry> zip_central_directory(const uint8_t* base, uint64_t n);

// Whether `storage` points into a file mapping made by load_mapped (read-only,
// MAP_SHARED): then drop_mapped_pages may be called on its bytes.
bool is_mapped_file_storage(const c10::Storage& storage);

// Where such a storage's bytes lie in the file it was mapped from: a
// descriptor open for reading (valid while the storage lives) and the
// offset. nullopt for any other storage.
struct FileSpan {
  int fd = -1;
  uint64_t offset = 0;
};
std::optional<FileSpan> mapped_file_span(const c10::Storage& storage);

// Unmaps the whole pages inside [data, data + size) of such a storage from
// this process: they stop counting in its RSS and fault back in from the
// page cache when read again. Keeps the packer's memory flat while it reads
// a model larger than memory. Never call it on other memory: anonymous
// pages would read back as zeros.
void drop_mapped_pages(const void* data, size_t size);

}  // namespace zcwrap::detail
