#include "placement.hpp"

#include <dlfcn.h>

#include <ATen/ATen.h>

#include "file_util.hpp"
#include "zcwrap/error.hpp"
#include "zcwrap/version.hpp"

namespace zcwrap::detail {

bool load_cuda_backend(std::string* why) {
  struct Result {
    bool loaded = false;
    std::string why;
  };
  static const Result result = [] {
    constexpr int kFlags = RTLD_NOW | RTLD_GLOBAL;
    if (::dlopen("libtorch_cuda.so", kFlags | RTLD_NOLOAD) != nullptr) return Result{true, ""};
    // Beside the LibTorch this process runs (libtorch_cpu.so's folder), then
    // wherever the loader looks.
    std::vector<std::string> candidates;
    Dl_info info{};
    if (::dladdr(reinterpret_cast<void*>(&at::globalContext), &info) != 0 && info.dli_fname != nullptr) {
      candidates.push_back(parent_dir(info.dli_fname) + "/libtorch_cuda.so");
    }
    candidates.push_back("libtorch_cuda.so");
    std::string why;
    for (const std::string& candidate : candidates) {
      if (::dlopen(candidate.c_str(), kFlags) != nullptr) return Result{true, ""};
      if (const char* error = ::dlerror(); error != nullptr && why.empty()) why = error;
    }
    return Result{false, why};
  }();
  if (why != nullptr) *why = result.why;
  return result.loaded;
}

c10::Device parse_device(const std::string& device) {
  c10::Device parsed(c10::kCPU);
  try {
    parsed = c10::Device(device);
  } catch (const std::exception&) {
    throw Error(ErrorCode::kDevice, "device '" + device + "': not a device name (try cpu or cuda:0)");
  }
  if (parsed.is_cuda()) {
    std::string why;
    if (!load_cuda_backend(&why)) {
      throw Error(ErrorCode::kDevice, "device '" + device + "': this LibTorch has no CUDA support (" + why + ")");
    }
    if (!at::hasCUDA()) {
      throw Error(ErrorCode::kDevice, "device '" + device + "': no CUDA device is present (LibTorch " +
                                          kLibTorchVersion + " has CUDA support, but finds no GPU)");
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
