#include "describe.hpp"

#include <chrono>
#include <sstream>

#include <caffe2/serialize/inline_container.h>
#include <nlohmann/json.hpp>
#include <xxhash.h>

#include "blob_file.hpp"
#include "file_util.hpp"
#include "messages.hpp"
#include "pickle_scan.hpp"
#include "wrapper_access.hpp"
#include "zcwrap/error.hpp"

namespace zcwrap {

namespace detail {
namespace {

std::vector<std::string> import_texts(const std::vector<PickleGlobal>& globals) {
  std::vector<std::string> out;
  out.reserve(globals.size());
  for (const PickleGlobal& g : globals) out.push_back(g.text());
  return out;
}

// What the pickles of `blob` import: one entry per model (empty for
// TorchScript), and the pipeline object's last when there is one.
std::vector<std::vector<PickleGlobal>> blob_imports(const BlobFile& blob) {
  std::vector<std::vector<PickleGlobal>> out;
  const format::Manifest& m = blob.manifest();
  for (size_t i = 0; i < m.models.size(); ++i) {
    out.emplace_back();
    if (format::skeleton_kind(m.models[i].skeleton.kind) != format::SkeletonKind::kPythonPickle) continue;
    out.back() = pickle_globals(blob.skeleton(i), blob.path() + ": model '" + m.models[i].name + "'");
  }
  if (const std::optional<std::string> pickle = blob.pipeline_pickle()) {
    out.push_back(pickle_globals(*pickle, blob.path() + ": pipeline object"));
  }
  return out;
}

}  // namespace

TensorInfo tensor_info(const format::TensorEntry& t, const format::Manifest& m, const format::Header& h) {
  const uint64_t item = format::dtype_size(t.dtype);
  uint64_t numel = 1;
  for (int64_t d : t.sizes) numel *= static_cast<uint64_t>(d);  // bounded by parse_manifest
  return {t.path,
          format::tensor_kind_name(t.kind),
          t.dtype,
          t.sizes,
          t.strides,
          numel * item,
          t.storage,
          h.data_offset + m.storages[t.storage].offset + t.storage_offset * item};
}

BlobInfo describe_layout(const format::Header& h, const format::Manifest& m, const std::string& blob_path,
                         const std::vector<std::vector<PickleGlobal>>& imports, const DescribeOptions& options) {
  BlobInfo info;
  info.blob = blob_path;
  info.format_version = m.version;
  info.producer = m.producer;
  info.file_size = h.file_size;
  info.alignment = h.alignment;
  info.standalone = m.standalone;
  info.header = {h.header_length,    h.manifest_offset, h.manifest_length, h.skeletons_offset,
                 h.skeletons_length, h.data_offset,     h.data_length,     h.meta_checksum};
  info.storage_count = m.storages.size();
  for (const format::StorageEntry& s : m.storages) info.storage_bytes += s.nbytes;

  info.models.reserve(m.models.size());
  for (const format::ModelEntry& entry : m.models) {
    ModelInfo model;
    if (info.models.size() < imports.size()) model.imports = import_texts(imports[info.models.size()]);
    model.name = entry.name;
    model.skeleton = {entry.skeleton.kind, entry.skeleton.compression, entry.skeleton.length,
                      entry.skeleton.raw_length};
    model.tensor_count = entry.tensors.size();
    if (options.tensors) model.tensors.reserve(entry.tensors.size());
    for (const format::TensorEntry& t : entry.tensors) {
      TensorInfo tensor = tensor_info(t, m, h);
      model.shared_bytes += tensor.bytes;
      if (options.tensors) model.tensors.push_back(std::move(tensor));
    }
    model.unshared_bytes = entry.skeleton.unshared_bytes;
    const uint64_t all = model.shared_bytes + model.unshared_bytes;
    model.shared_fraction = all == 0 ? 1.0 : double(model.shared_bytes) / double(all);
    info.tensor_bytes += model.shared_bytes;
    info.unshared_bytes += model.unshared_bytes;
    info.models.push_back(std::move(model));
  }
  info.dedup_saved_bytes = info.tensor_bytes > info.storage_bytes ? info.tensor_bytes - info.storage_bytes : 0;
  if (m.pipeline_object) {
    const format::SkeletonEntry& sk = *m.pipeline_object;
    info.pipeline_object = PipelineObjectInfo{sk.compression, sk.length, sk.raw_length, {}};
    if (imports.size() > m.models.size()) info.pipeline_object->imports = import_texts(imports.back());
  }
  return info;
}

namespace {

// What model `index`'s aot_inductor skeleton says of its compiled code: its
// aoti.json (docs/FORMAT.md), read without loading anything, so a build
// without AOTInductor (Debian's LibTorch) describes it too.
CompiledInfo compiled_info(const BlobFile& blob, size_t index) {
  const std::string where = blob.path() + ": model '" + blob.manifest().models[index].name + "'";
  const std::string skeleton = blob.skeleton(index);
  try {
    std::istringstream in(skeleton);
    caffe2::serialize::PyTorchStreamReader reader(&in);
    const auto [data, size] = reader.getRecord("aoti.json");
    const char* text = static_cast<const char*>(data.get());
    const nlohmann::json j = nlohmann::json::parse(text, text + size);
    CompiledInfo c;
    c.device = j.at("device").get<std::string>();
    const std::string library = j.at("library").get<std::string>();
    for (const nlohmann::json& r : j.at("records")) {
      const std::string name = r.at("name").get<std::string>();
      if (name == library) c.library_bytes = r.at("size").get<uint64_t>();
      if (format::is_aoti_kernel_file(name)) ++c.kernel_files;
    }
    const nlohmann::json metadata = j.value("metadata", nlohmann::json::object());
    if (metadata.is_object() && metadata.contains("AOTI_COMPUTE_CAPABILITY") &&
        metadata["AOTI_COMPUTE_CAPABILITY"].is_string()) {
      c.compute_capability = metadata["AOTI_COMPUTE_CAPABILITY"].get<std::string>();
    }
    return c;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kBadBlob, where + ": malformed aot_inductor skeleton: " + first_line(e));
  }
}

}  // namespace

BlobInfo describe_blob(const ModelWrapper& wrapper, const std::string& path, const DescribeOptions& options) {
  const std::shared_ptr<const BlobFile> blob = checked_blob(wrapper);
  BlobInfo info = describe_layout(blob->header(), blob->manifest(), wrapper.blob_path(), blob_imports(*blob), options);
  if (absolute_path(path) != wrapper.blob_path()) info.config = path;
  for (size_t i = 0; i < info.models.size(); ++i) {
    if (format::skeleton_kind(blob->manifest().models[i].skeleton.kind) == format::SkeletonKind::kAotInductor) {
      info.models[i].compiled = compiled_info(*blob, i);
    }
  }
  return info;
}

}  // namespace detail

BlobInfo describe(const std::string& path, const DescribeOptions& options) {
  return detail::describe_blob(ModelWrapper::open(path), path, options);
}

VerifyReport verify(const std::string& path, unsigned threads) {
  const auto start = std::chrono::steady_clock::now();
  const ModelWrapper wrapper = ModelWrapper::open(path);
  const std::shared_ptr<const detail::BlobFile> blob = detail::checked_blob(wrapper);
  const format::Manifest& m = blob->manifest();
  VerifyReport report;
  report.blob = wrapper.blob_path();
  report.storages = m.storages.size();
  for (size_t i : blob->bad_storages(threads)) {
    report.bad.push_back({i, blob->storage_user(i), m.storages[i].xxh3,
                          XXH3_64bits(blob->storage_data(i), m.storages[i].nbytes)});
  }
  for (const format::StorageEntry& s : m.storages) report.bytes += s.nbytes;
  report.ok = report.bad.empty();
  const std::vector<std::vector<detail::PickleGlobal>> imports = detail::blob_imports(*blob);
  for (size_t i = 0; i < imports.size(); ++i) {
    const std::string owner = i < m.models.size() ? "model '" + m.models[i].name + "': " : "pipeline object: ";
    for (const detail::PickleGlobal& g : imports[i]) {
      if (detail::beyond_torch(g)) report.foreign_imports.push_back(owner + g.text());
    }
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

void to_json(nlohmann::json& j, const TensorInfo& t) {
  j = {{"path", t.path},         {"kind", t.kind},   {"dtype", t.dtype},       {"shape", t.shape},
       {"strides", t.strides},   {"bytes", t.bytes}, {"storage", t.storage},   {"offset", t.offset}};
}

void to_json(nlohmann::json& j, const CompiledInfo& c) {
  j = {{"device", c.device},
       {"compute_capability", c.compute_capability},
       {"library_bytes", c.library_bytes},
       {"kernel_files", c.kernel_files}};
}

void to_json(nlohmann::json& j, const ModelInfo& model) {
  j = {{"name", model.name},
       {"skeleton",
        {{"kind", model.skeleton.kind},
         {"compression", model.skeleton.compression},
         {"stored_bytes", model.skeleton.stored_bytes},
         {"raw_bytes", model.skeleton.raw_bytes}}},
       {"tensor_count", model.tensor_count},
       {"shared_bytes", model.shared_bytes},
       {"unshared_bytes", model.unshared_bytes},
       {"shared_fraction", model.shared_fraction},
       {"imports", model.imports},
       {"compiled", model.compiled ? nlohmann::json(*model.compiled) : nlohmann::json(nullptr)},
       {"tensors", model.tensors}};
}

void to_json(nlohmann::json& j, const PipelineObjectInfo& pipeline) {
  j = {{"compression", pipeline.compression},
       {"stored_bytes", pipeline.stored_bytes},
       {"raw_bytes", pipeline.raw_bytes},
       {"imports", pipeline.imports}};
}

void to_json(nlohmann::json& j, const BlobInfo& info) {
  const SectionsInfo& h = info.header;
  j = {{"blob", info.blob},
       {"config", info.config ? nlohmann::json(*info.config) : nlohmann::json(nullptr)},
       {"format_version", info.format_version},
       {"producer", info.producer},
       {"file_size", info.file_size},
       {"alignment", info.alignment},
       {"standalone", info.standalone},
       {"header",
        {{"header_length", h.header_length},
         {"manifest_offset", h.manifest_offset},
         {"manifest_length", h.manifest_length},
         {"skeletons_offset", h.skeletons_offset},
         {"skeletons_length", h.skeletons_length},
         {"data_offset", h.data_offset},
         {"data_length", h.data_length},
         {"meta_checksum", format::hex64(h.meta_checksum)}}},
       {"storages", {{"count", info.storage_count}, {"bytes", info.storage_bytes}}},
       {"tensor_bytes", info.tensor_bytes},
       {"dedup_saved_bytes", info.dedup_saved_bytes},
       {"unshared_bytes", info.unshared_bytes},
       {"models", info.models},
       {"pipeline_object", info.pipeline_object ? nlohmann::json(*info.pipeline_object) : nlohmann::json(nullptr)}};
}

void to_json(nlohmann::json& j, const VerifyReport& report) {
  nlohmann::json bad = nlohmann::json::array();
  for (const BadStorage& b : report.bad) {
    bad.push_back({{"storage", b.storage},
                   {"tensor", b.tensor},
                   {"expected", format::hex64(b.expected)},
                   {"actual", format::hex64(b.actual)}});
  }
  j = {{"blob", report.blob},         {"ok", report.ok},           {"storages", report.storages},
       {"bytes", report.bytes},       {"seconds", report.seconds}, {"bad", std::move(bad)},
       {"foreign_imports", report.foreign_imports}};
}

}  // namespace zcwrap
