#include "placement.hpp"

#include <ATen/ATen.h>

#include "zcwrap/error.hpp"

namespace zcwrap::detail {

c10::Device parse_device(const std::string& device) {
  c10::Device parsed(c10::kCPU);
  try {
    parsed = c10::Device(device);
  } catch (const std::exception&) {
    throw Error(ErrorCode::kDevice, "device '" + device + "': not a device name (try cpu or cuda:0)");
  }
  if (parsed.is_cuda()) {
    if (!at::hasCUDA()) {
      throw Error(ErrorCode::kDevice, "device '" + device + "': this LibTorch has no CUDA support");
    }
    const int count = at::detail::getCUDAHooks().getNumGPUs();
    if (parsed.has_index() ? parsed.index() >= count : count == 0) {
      throw Error(ErrorCode::kDevice, "device '" + device + "': only " + std::to_string(count) +
                                          " CUDA device(s) present");
    }
  } else if (!parsed.is_cpu()) {
    throw Error(ErrorCode::kDevice, "device '" + device + "': only cpu and cuda devices are supported");
  }
  return parsed;
}

std::vector<c10::Storage> make_storages(const std::shared_ptr<const BlobFile>& blob, const c10::Device& device,
                                        bool use_fast_load) {
  if (use_fast_load && device.is_cuda() && fast_load_built()) return fast_load_storages(*blob, device);
  const format::Manifest& m = blob->manifest();
  std::vector<c10::Storage> out;
  out.reserve(m.storages.size());
  for (size_t i = 0; i < m.storages.size(); ++i) {
    // Unless mapped copy-on-write the pages are PROT_READ, so a write through
    // this pointer faults instead of changing the weights other workers see.
    void* data = blob->storage_data(i);
    auto* keep = new std::shared_ptr<const BlobFile>(blob);
    c10::DataPtr ptr(data, keep, [](void* ctx) { delete static_cast<std::shared_ptr<const BlobFile>*>(ctx); },
                     c10::Device(c10::kCPU));
    c10::Storage storage(c10::Storage::use_byte_size_t(), m.storages[i].nbytes, std::move(ptr),
                         /*allocator=*/nullptr, /*resizable=*/false);
    if (!device.is_cpu()) {
      at::Tensor bytes = at::empty({0}, at::kByte).set_(storage, 0, {int64_t(m.storages[i].nbytes)}, {1});
      storage = bytes.to(device).storage();
    }
    out.push_back(std::move(storage));
  }
  return out;
}

std::vector<c10::Storage> storage_views(const c10::Storage& owner,
                                        const std::vector<format::StorageEntry>& storages,
                                        const std::string& path) {
  auto* base = static_cast<uint8_t*>(owner.data_ptr().get());
  const uint64_t size = owner.nbytes();
  const c10::Device device = owner.device();
  std::vector<c10::Storage> out;
  out.reserve(storages.size());
  for (size_t i = 0; i < storages.size(); ++i) {
    const format::StorageEntry& s = storages[i];
    if (s.offset > size || s.nbytes > size - s.offset) {
      throw Error(ErrorCode::kBadBlob, path + ": storage " + std::to_string(i) + " (offset " +
                                           std::to_string(s.offset) + ", " + std::to_string(s.nbytes) +
                                           " bytes) lies outside the " + std::to_string(size) +
                                           "-byte data section");
    }
    // The context is a reference to the owner: the allocation goes back to
    // its allocator when the last view is released.
    uint8_t* data = base == nullptr ? nullptr : base + s.offset;
    c10::DataPtr ptr(data, new c10::Storage(owner), [](void* ctx) { delete static_cast<c10::Storage*>(ctx); },
                     device);
    out.emplace_back(c10::Storage::use_byte_size_t(), s.nbytes, std::move(ptr), /*allocator=*/nullptr,
                     /*resizable=*/false);
  }
  return out;
}

}  // namespace zcwrap::detail
