#include "rebind.hpp"

#include <sstream>

#include "torch_compat.hpp"
#include "torch_util.hpp"
#include "tensor_walk.hpp"
#include "messages.hpp"
#include "zcwrap/version.hpp"

namespace zcwrap::detail {
namespace {

// An empty tensor of the entry's dtype (and quantizer) to bind a storage to.
at::Tensor empty_like_entry(const format::TensorEntry& t, at::ScalarType dtype, const c10::Device& device) {
  const QuietWarnings quiet;  // LibTorch 2.10+ warns of quantized dtypes' deprecation on each one
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  const format::Quantization& q = t.quantization;
  if (q.scheme == "per_tensor_affine") return at::_empty_affine_quantized({0}, options, q.scale, q.zero_point);
  if (q.scheme == "per_channel_affine") {
    const at::Tensor scales = at::tensor(q.scales, at::kDouble).to(device);
    const at::Tensor zero_points = at::tensor(q.zero_points, at::kLong).to(device);
    return at::_empty_per_channel_affine_quantized({0}, scales, zero_points, q.axis, options);
  }
  return at::empty({0}, options);
}

at::Tensor bind(const format::TensorEntry& t, const std::vector<c10::Storage>& storages, const c10::Device& device,
                Flags flags) {
  at::Tensor bound = empty_like_entry(t, dtype_from_name(t.dtype), device)
                         .set_(storages[t.storage], static_cast<int64_t>(t.storage_offset), t.sizes, t.strides);
  if (flags == Flags::kAsPacked && t.requires_grad) bound.requires_grad_(true);
  return bound;
}

}  // namespace

Error needs_python(const BlobFile& blob, size_t model) {
  const format::SkeletonEntry& sk = blob.manifest().models[model].skeleton;
  const format::SkeletonKindInfo& info = format::skeleton_kind_info(format::skeleton_kind(sk.kind));
  // The CLI has no Python: the message names the Python call that does what was asked.
  const std::string file = info.python_file.empty()
                               ? std::string()
                               : "; zcwrap.ModelWrapper.open(\"" + blob.path() + "\").unpack(\"OUT\") writes it as " +
                                     std::string(info.python_file);
  return Error(ErrorCode::kBadModel, blob.path() + ": model '" + blob.manifest().models[model].name + "' is " +
                                         std::string(info.description) + " (skeleton kind " + sk.kind +
                                         "), not TorchScript; unwrap it from Python with the zcwrap package" + file);
}

std::vector<at::Tensor> bind_tensors(const BlobFile& blob, size_t index, const std::vector<c10::Storage>& storages,
                                     const c10::Device& device, Flags flags) {
  std::vector<at::Tensor> out;
  for (const format::TensorEntry& t : blob.manifest().models[index].tensors) {
    out.push_back(bind(t, storages, device, flags));
  }
  return out;
}

torch::jit::Module rebuild_module(const BlobFile& blob, size_t index, const std::vector<c10::Storage>& storages,
                                  const c10::Device& device, Flags flags, std::vector<at::Tensor>* bound) {
  const format::ModelEntry& entry = blob.manifest().models[index];
  const std::string where = blob.path() + ": model '" + entry.name + "'";
  torch::jit::Module module;
  try {
    std::istringstream in(blob.skeleton(index));
    module = torch::jit::load(in, at::kCPU);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    // Most often a blob packed under a newer LibTorch than this one: say
    // which made it and which reads it.
    throw Error(ErrorCode::kBadBlob, where + ": skeleton does not load under libtorch " + kLibTorchVersion +
                                         " (the blob was made by " + blob.manifest().producer +
                                         "; re-pack it with this zcwrap, or unwrap it with a LibTorch at least "
                                         "as new): " + first_line(e));
  }
  size_t next = 0;
  rewrite_tensors(module, [&](const std::string& path, format::TensorKind kind, const at::Tensor& placeholder) {
    if (next >= entry.tensors.size() || entry.tensors[next].path != path || entry.tensors[next].kind != kind) {
      throw Error(ErrorCode::kBadBlob, where + ": skeleton and manifest disagree at tensor " +
                                           std::to_string(next) + " ('" + path + "')");
    }
    const format::TensorEntry& t = entry.tensors[next++];
    const at::ScalarType dtype = dtype_from_name(t.dtype);
    // Quantized tensors' placeholders hold their integer representation
    // (blobs packed before 0.2 held empty quantized tensors).
    if (placeholder.scalar_type() != dtype && placeholder.scalar_type() != c10::toUnderlying(dtype)) {
      throw Error(ErrorCode::kBadBlob,
                  where + ": tensor '" + path + "' is " + t.dtype + " in the manifest but not in the skeleton");
    }
    at::Tensor tensor = bind(t, storages, device, flags);
    if (bound != nullptr) bound->push_back(tensor);
    return tensor;
  });
  if (next != entry.tensors.size()) {
    throw Error(ErrorCode::kBadBlob, where + ": manifest lists " + std::to_string(entry.tensors.size()) +
                                         " tensors, the skeleton holds " + std::to_string(next));
  }
  if (flags == Flags::kInference) module.eval();
  return module;
}

}  // namespace zcwrap::detail
