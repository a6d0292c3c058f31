// ModelWrapper::unpack: one model of a blob written back as the standard
// TorchScript file it was packed from.
#include <sstream>

#include <caffe2/serialize/inline_container.h>

#include "aoti.hpp"
#include "blob_file.hpp"
#include "constants.hpp"
#include "file_util.hpp"
#include "placement.hpp"
#include "rebind.hpp"
#include "text.hpp"
#include "torch_util.hpp"
#include "messages.hpp"
#include "zcwrap/error.hpp"
#include "zcwrap/model_wrapper.hpp"
#include "wrapper_access.hpp"

namespace zcwrap {

using detail::join;

void ModelWrapper::unpack(const std::string& output_path, const std::string& model) const {
  auto blob = detail::checked_blob(*this);
  if (model.empty() && !standalone_) {
    throw Error(ErrorCode::kUsage, blob_path_ + ": holds a pipeline; name the model to unpack (one of: " +
                                       join(names_) + ")");
  }
  const int index = model.empty() ? 0 : blob->find_model(model);
  if (index < 0) {
    throw Error(ErrorCode::kUsage, "no model named '" + model + "'; the blob holds: " + join(names_));
  }
  const format::SkeletonKind kind = format::skeleton_kind(blob->manifest().models[index].skeleton.kind);
  if (kind == format::SkeletonKind::kAotInductor) {
    // The package again, every record as packed, the weights filled in.
    detail::write_aoti_package(*blob, static_cast<size_t>(index), output_path);
    return;
  }
  if (kind != format::SkeletonKind::kTorchScript) {
    if (kind != format::SkeletonKind::kUnknown && format::skeleton_kind_info(kind).rebuilt_in_python) {
      throw detail::needs_python(*blob, static_cast<size_t>(index));
    }
    throw Error(ErrorCode::kBadBlob, blob_path_ + ": model '" + names_[index] + "': skeleton kind '" +
                                         blob->manifest().models[index].skeleton.kind +
                                         "' cannot be unpacked by this zcwrap; upgrade zcwrap");
  }
  const std::string skeleton = blob->skeleton(static_cast<size_t>(index));
  torch::jit::ExtraFilesMap extra_files;
  try {
    std::istringstream in(skeleton);
    caffe2::serialize::PyTorchStreamReader reader(&in);
    for (const std::string& record : reader.getAllRecords()) {
      if (record.rfind("extra/", 0) != 0) continue;
      auto [data, size] = reader.getRecord(record);
      extra_files[record.substr(6)] = std::string(static_cast<const char*>(data.get()), size);
    }
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kBadBlob, blob_path_ + ": skeleton does not read: " + detail::first_line(e));
  }
  torch::jit::Module module =
      detail::rebuild_module(*blob, static_cast<size_t>(index), detail::make_storages(blob, c10::Device(c10::kCPU)),
                             c10::Device(c10::kCPU), detail::Flags::kAsPacked);
  std::ostringstream out;
  try {
    detail::sink_tensor_constants(module);
    module.save(out, extra_files);
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kBadModel, blob_path_ + ": cannot save model '" + names_[index] + "': " +
                                          detail::first_line(e));
  }
  detail::AtomicFile file(output_path);
  const std::string bytes = out.str();
  file.write(bytes.data(), bytes.size());
  file.commit();
}

}  // namespace zcwrap
