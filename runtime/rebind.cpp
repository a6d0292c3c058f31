#include "rebind.hpp"

#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <sstream>

#include "placement.hpp"
#include "torch_compat.hpp"
#include "torch_util.hpp"
#include "zcwrap/error.hpp"
#include "zcwrap/version.hpp"

namespace zcwrap::detail {
namespace {

// Warms the data section's pages as asked; returns warnings for what the
// system refused.
std::vector<std::string> prefetch(const BlobFile& blob, Prefetch mode) {
  std::vector<std::string> warnings;
  const format::Header& h = blob.header();
  uint8_t* data = blob.data_section();
  const size_t length = h.data_length;
  if (length == 0 || mode == Prefetch::kNone) return warnings;
  if (h.alignment >= (2u << 20) && !blob.in_memory() && ::madvise(data, length, MADV_HUGEPAGE) != 0) {
    warnings.push_back(blob.path() + ": huge pages not available for this mapping (" + errno_text(errno) + ")");
  }
  // madvise takes whole pages; a memory blob's data section need not start
  // on one (its alignment holds relative to the blob).
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t first = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
  const size_t pages_length = reinterpret_cast<uintptr_t>(data) + length - first;
  if (mode == Prefetch::kWillNeed) {
    ::madvise(reinterpret_cast<void*>(first), pages_length, MADV_WILLNEED);
    return warnings;
  }
  // One call maps every page (Linux 5.14+): 82 ms for 1 GiB of shared
  // memory here, against 110 ms for reading one byte a page, the fallback
  // (volatile keeps that loop).
#ifdef MADV_POPULATE_READ
  const bool populated = ::madvise(reinterpret_cast<void*>(first), pages_length, MADV_POPULATE_READ) == 0;
#else
  const bool populated = false;
#endif
  if (!populated) {
    volatile uint8_t sink = 0;
    for (size_t off = 0; off < length; off += page) sink = sink ^ data[off];
  }
  if (mode == Prefetch::kLock && ::mlock(data, length) != 0) {
    struct rlimit limit {};
    ::getrlimit(RLIMIT_MEMLOCK, &limit);
    warnings.push_back(blob.path() + ": cannot lock " + std::to_string(length) + " bytes in memory (" +
                       errno_text(errno) + "; RLIMIT_MEMLOCK is " + std::to_string(limit.rlim_cur) +
                       " bytes): raise it with ulimit -l or LimitMEMLOCK=; pages were prefetched, not locked");
  }
  return warnings;
}

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
                bool as_saved) {
  at::Tensor bound = empty_like_entry(t, dtype_from_name(t.dtype), device)
                         .set_(storages[t.storage], static_cast<int64_t>(t.storage_offset), t.sizes, t.strides);
  if (as_saved && t.requires_grad) bound.requires_grad_(true);
  return bound;
}

}  // namespace

Error needs_python(const std::string& blob, const std::string& model) {
  return Error(ErrorCode::kBadModel, blob + ": model '" + model +
                                         "' is an eager PyTorch module (skeleton kind python_pickle), not "
                                         "TorchScript; unwrap it from Python with the zcwrap package");
}

std::vector<at::Tensor> bind_tensors(const BlobFile& blob, size_t index, const std::vector<c10::Storage>& storages,
                                     const c10::Device& device, bool as_saved) {
  std::vector<at::Tensor> out;
  for (const format::TensorEntry& t : blob.manifest().models[index].tensors) {
    out.push_back(bind(t, storages, device, as_saved));
  }
  return out;
}

torch::jit::Module rebuild_model(const BlobFile& blob, size_t index, const std::vector<c10::Storage>& storages,
                                 const c10::Device& device, bool as_saved) {
  const format::ModelEntry& entry = blob.manifest().models[index];
  const std::string where = blob.path() + ": model '" + entry.name + "'";
  switch (format::skeleton_kind(entry.skeleton.kind)) {
    case format::SkeletonKind::kTorchScript:
      break;
    case format::SkeletonKind::kPythonPickle:
      throw needs_python(blob.path(), entry.name);
    case format::SkeletonKind::kUnknown:
      throw Error(ErrorCode::kBadBlob, where + ": skeleton kind '" + entry.skeleton.kind +
                                           "' is not supported by this zcwrap; upgrade zcwrap");
  }
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
    return bind(t, storages, device, as_saved);
  });
  if (next != entry.tensors.size()) {
    throw Error(ErrorCode::kBadBlob, where + ": manifest lists " + std::to_string(entry.tensors.size()) +
                                         " tensors, the skeleton holds " + std::to_string(next));
  }
  if (!as_saved) module.eval();
  return module;
}

std::shared_ptr<Unwrapped::State> unwrap_blob(const std::shared_ptr<const BlobFile>& blob,
                                              const UnwrapOptions& options, bool bind_only_pickles) {
  const c10::Device target = parse_device(options.device);
  const char* verify_env = std::getenv("ZCWRAP_VERIFY");
  if (options.verify || (verify_env != nullptr && std::string(verify_env) == "1")) {
    const std::vector<size_t> bad = blob->bad_storages();
    if (!bad.empty()) {
      throw Error(ErrorCode::kBadBlob, blob->path() + ": storage " + std::to_string(bad.front()) + " (" +
                                           blob->storage_user(bad.front()) +
                                           ") fails its checksum: the blob is corrupt; re-pack it");
    }
  }
  auto state = std::make_shared<Unwrapped::State>();
  state->warnings = prefetch(*blob, options.prefetch);
  state->blob = blob;
  state->standalone = blob->manifest().standalone;
  state->device = target.str();
  for (const format::ModelEntry& m : blob->manifest().models) {
    const format::SkeletonKind kind = format::skeleton_kind(m.skeleton.kind);
    if (kind == format::SkeletonKind::kPythonPickle && !bind_only_pickles) throw needs_python(blob->path(), m.name);
    state->names.push_back(m.name);
    state->kinds.push_back(kind);
  }
  try {
    const std::vector<c10::Storage> storages = make_storages(blob, target, options.use_fast_load);
    for (size_t i = 0; i < blob->manifest().models.size(); ++i) {
      if (state->kinds[i] == format::SkeletonKind::kPythonPickle) {
        state->modules.emplace_back();
        state->tensors.push_back(bind_tensors(*blob, i, storages, target));
      } else {
        state->modules.push_back(rebuild_model(*blob, i, storages, target));
        state->tensors.emplace_back();
      }
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kDevice,
                blob->path() + ": cannot place the weights on " + target.str() + ": " + first_line(e));
  }
  return state;
}

}  // namespace zcwrap::detail
