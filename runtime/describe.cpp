#include <chrono>

#include <nlohmann/json.hpp>
#include <xxhash.h>

#include "blob_file.hpp"
#include "describe.hpp"
#include "file_util.hpp"
#include "zcwrap/inspect.hpp"
#include "zcwrap/model_wrapper.hpp"

namespace zcwrap {

namespace detail {

TensorPlace tensor_place(const format::TensorEntry& t, const format::Manifest& m, const format::Header& h) {
  const uint64_t item = format::dtype_size(t.dtype);
  uint64_t numel = 1;
  for (int64_t d : t.sizes) numel *= static_cast<uint64_t>(d);  // bounded by parse_manifest
  return {numel * item, h.data_offset + m.storages[t.storage].offset + t.storage_offset * item};
}

nlohmann::json describe_blob(const ModelWrapper& wrapper, const std::string& path, bool with_tensors) {
  using nlohmann::json;
  const bool from_config = absolute_path(path) != wrapper.blob_path();
  const std::shared_ptr<const BlobFile> blob = checked_blob(wrapper);
  const format::Header& h = blob->header();
  const format::Manifest& m = blob->manifest();

  uint64_t storage_bytes = 0;
  for (const format::StorageEntry& s : m.storages) storage_bytes += s.nbytes;

  uint64_t tensor_bytes_total = 0;
  uint64_t unshared_total = 0;
  json models = json::array();
  for (const format::ModelEntry& model : m.models) {
    json tensors = json::array();
    uint64_t shared = 0;
    for (const format::TensorEntry& t : model.tensors) {
      const TensorPlace place = tensor_place(t, m, h);
      shared += place.bytes;
      if (!with_tensors) continue;
      tensors.push_back({{"path", t.path},
                         {"kind", format::tensor_kind_name(t.kind)},
                         {"dtype", t.dtype},
                         {"shape", t.sizes},
                         {"strides", t.strides},
                         {"bytes", place.bytes},
                         {"storage", t.storage},
                         {"offset", place.offset}});
    }
    tensor_bytes_total += shared;
    unshared_total += model.skeleton.unshared_bytes;
    const uint64_t all = shared + model.skeleton.unshared_bytes;
    json entry = {{"name", model.name},
                  {"skeleton",
                   {{"kind", model.skeleton.kind},
                    {"compression", model.skeleton.compression},
                    {"stored_bytes", model.skeleton.length},
                    {"raw_bytes", model.skeleton.raw_length}}},
                  {"tensor_count", model.tensors.size()},
                  {"shared_bytes", shared},
                  {"unshared_bytes", model.skeleton.unshared_bytes},
                  {"shared_fraction", all == 0 ? 1.0 : double(shared) / double(all)}};
    if (with_tensors) entry["tensors"] = std::move(tensors);
    models.push_back(std::move(entry));
  }
  return {{"blob", wrapper.blob_path()},
          {"config", from_config ? json(path) : json(nullptr)},
          {"format_version", m.version},
          {"producer", m.producer},
          {"file_size", h.file_size},
          {"alignment", h.alignment},
          {"standalone", m.standalone},
          {"header",
           {{"header_length", h.header_length},
            {"manifest_offset", h.manifest_offset},
            {"manifest_length", h.manifest_length},
            {"skeletons_offset", h.skeletons_offset},
            {"skeletons_length", h.skeletons_length},
            {"data_offset", h.data_offset},
            {"data_length", h.data_length},
            {"meta_checksum", format::hex64(h.meta_checksum)}}},
          {"storages", {{"count", m.storages.size()}, {"bytes", storage_bytes}}},
          {"tensor_bytes", tensor_bytes_total},
          {"dedup_saved_bytes", tensor_bytes_total > storage_bytes ? tensor_bytes_total - storage_bytes : 0},
          {"unshared_bytes", unshared_total},
          {"models", std::move(models)}};
}

}  // namespace detail

nlohmann::json describe(const std::string& path) {
  return detail::describe_blob(ModelWrapper::open(path), path, /*with_tensors=*/true);
}

nlohmann::json verify(const std::string& path, unsigned threads) {
  using nlohmann::json;
  const auto start = std::chrono::steady_clock::now();
  const ModelWrapper wrapper = ModelWrapper::open(path);
  auto blob = detail::checked_blob(wrapper);
  const format::Manifest& m = blob->manifest();
  json bad = json::array();
  for (size_t i : blob->bad_storages(threads)) {
    bad.push_back({{"storage", i},
                   {"tensor", blob->storage_user(i)},
                   {"expected", format::hex64(m.storages[i].xxh3)},
                   {"actual", format::hex64(XXH3_64bits(blob->storage_data(i), m.storages[i].nbytes))}});
  }
  uint64_t bytes = 0;
  for (const format::StorageEntry& s : m.storages) bytes += s.nbytes;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return {{"blob", wrapper.blob_path()}, {"ok", bad.empty()},     {"storages", m.storages.size()},
          {"bytes", bytes},              {"seconds", seconds},     {"bad", std::move(bad)}};
}

}  // namespace zcwrap
