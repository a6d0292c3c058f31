#include "device_load.hpp"

#include "zcwrap/error.hpp"

namespace zcwrap::detail {

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
