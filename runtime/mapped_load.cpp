// Loading a TorchScript file for packing without copying its tensors.
//
// torch::jit::load reads every tensor record into fresh memory and checks
// its zip CRC on the way (on LibTorch 1.13 most of the load time of a large
// model). The packer only needs the bytes once, to hash and write them. So:
// LibTorch loads a copy of the archive whose data/ records (the tensors of
// attributes) are replaced by 8-byte tags, and each storage is then pointed
// at its record's bytes in a read-only mapping of the original file. Graph
// constants (constants/) are loaded as usual. Records are stored uncompressed by
// every TorchScript writer; each one's zip local header is checked anyway.
#include "mapped_load.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include <caffe2/serialize/inline_container.h>

#include "constants.hpp"
#include "torch_util.hpp"
#include "file_util.hpp"

namespace zcwrap::detail {
namespace {

constexpr size_t kTagSize = 8;

uint32_t le32(const uint8_t* p) { return p[0] | p[1] << 8 | p[2] << 16 | uint32_t(p[3]) << 24; }
uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }

uint64_t le64(const uint8_t* p) { return le32(p) | uint64_t(le32(p + 4)) << 32; }

}  // namespace

std::map<std::string, ZipEntry> zip_central_directory(const uint8_t* base, uint64_t n) {
  std::map<std::string, ZipEntry> out;
  if (n < 22) return out;
  uint64_t eocd = n - 22;
  const uint64_t lowest = n > 22 + 65535 ? n - 22 - 65535 : 0;
  while (le32(base + eocd) != 0x06054b50) {
    if (eocd == lowest) return out;
    --eocd;
  }
  uint64_t entries = le16(base + eocd + 10);
  uint64_t cd = le32(base + eocd + 16);
  if ((cd == 0xffffffffu || entries == 0xffff) && eocd >= 20 && le32(base + eocd - 20) == 0x07064b50) {
    const uint64_t eocd64 = le64(base + eocd - 20 + 8);
    if (n < 56 || eocd64 > n - 56 || le32(base + eocd64) != 0x06064b50) return out;
    entries = le64(base + eocd64 + 32);
    cd = le64(base + eocd64 + 48);
  }
  uint64_t pos = cd;
  for (uint64_t i = 0; i < entries; ++i) {
    if (n < 46 || pos > n - 46 || le32(base + pos) != 0x02014b50) return {};
    ZipEntry e;
    e.method = le16(base + pos + 10);
    e.compressed = le32(base + pos + 20);
    e.size = le32(base + pos + 24);
    const uint16_t name_len = le16(base + pos + 28), extra_len = le16(base + pos + 30), comment_len = le16(base + pos + 32);
    if (pos + 46 + name_len + extra_len > n) return {};
    std::string name(reinterpret_cast<const char*>(base + pos + 46), name_len);
    // Zip64: sizes that do not fit 32 bits are in extra field 0x0001, in order.
    for (uint64_t x = pos + 46 + name_len; x + 4 <= pos + 46 + name_len + extra_len;) {
      const uint16_t id = le16(base + x), len = le16(base + x + 2);
      if (x + 4 + len > pos + 46 + name_len + extra_len) break;
      if (id == 0x0001) {
        uint64_t at = x + 4;
        if (e.size == 0xffffffffu && at + 8 <= x + 4 + len) e.size = le64(base + at), at += 8;
        if (e.compressed == 0xffffffffu && at + 8 <= x + 4 + len) e.compressed = le64(base + at);
      }
      x += 4 + len;
    }
    // Keyed by record name: the reader strips the "<archive>/" prefix too.
    const size_t slash = name.find('/');
    if (slash != std::string::npos) out.emplace(name.substr(slash + 1), e);
    pos += 46 + name_len + extra_len + comment_len;
  }
  return out;
}

namespace {

bool contains(const std::string& haystack, const char* needle) { return haystack.find(needle) != std::string::npos; }

// The file a model was loaded from: its mapping, which the storages point
// into, and a descriptor, from which pack copies their bytes file to file.
struct MappedSource {
  MappedRegion region;
  UniqueFd fd;
};

// The deleter of storages that point into the file's mapping; it also marks
// them (is_mapped_file_storage).
void release_mapping(void* ctx) { delete static_cast<std::shared_ptr<const MappedSource>*>(ctx); }

}  // namespace

bool is_mapped_file_storage(const c10::Storage& storage) {
  return storage.data_ptr().get_deleter() == &release_mapping;
}

std::optional<FileSpan> mapped_file_span(const c10::Storage& storage) {
  if (!is_mapped_file_storage(storage)) return std::nullopt;
  const auto& source = *static_cast<const std::shared_ptr<const MappedSource>*>(storage.data_ptr().get_context());
  const auto* data = static_cast<const uint8_t*>(storage.data_ptr().get());
  return FileSpan{source->fd.get(), static_cast<uint64_t>(data - source->region.data())};
}

void drop_mapped_pages(const void* data, size_t size) {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t start = (reinterpret_cast<uintptr_t>(data) + page - 1) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + size) & ~(page - 1);
  // Only whole pages inside the range; a failure only leaves them mapped.
  if (end > start) ::madvise(reinterpret_cast<void*>(start), end - start, MADV_DONTNEED);
}

std::optional<torch::jit::Module> load_mapped(const std::string& path, torch::jit::ExtraFilesMap& extra_files) {
  struct stat st {};
  UniqueFd fd = open_regular_file(path, &st);
  MappedRegion region = MappedRegion::map_fd(fd.get(), static_cast<uint64_t>(st.st_size), path);
  auto file = std::make_shared<MappedSource>(MappedSource{std::move(region), std::move(fd)});
  caffe2::serialize::PyTorchStreamReader reader(path);
  const std::vector<std::string> records = reader.getAllRecords();

  const std::map<std::string, ZipEntry> entries = zip_central_directory(file->region.data(), file->region.size());
  // The record's size if it is stored uncompressed inside the file, else 0.
  auto stored_size = [&](const std::string& record, uint64_t offset) -> uint64_t {
    auto it = entries.find(record);
    if (it == entries.end() || offset > file->region.size()) return 0;
    const ZipEntry& e = it->second;
    return e.method == 0 && e.compressed == e.size && e.size <= file->region.size() - offset ? e.size : 0;
  };

  struct Record {
    uint64_t offset;
    uint64_t size;
  };
  std::vector<Record> tagged;
  std::ostringstream copy;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t size) {
    copy.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
    return size;
  });
  writer.setMinVersion(reader.version());
  for (const std::string& name : records) {
    // The writer adds these itself.
    if (name == "version" || name == ".data/version" || name == ".data/serialization_id") continue;
    // Only data/ records: graph constants (constants/) are compared by value
    // while LibTorch 2.x compiles the code (constant pooling), which would
    // read past a tag. They are small, except in frozen models.
    const bool data_record = name.rfind("data/", 0) == 0;
    if (data_record) {
      const uint64_t offset = reader.getRecordOffset(name);
      const uint64_t size = stored_size(name, offset);
      if (size >= kTagSize) {
        uint64_t tag = tagged.size();
        tagged.push_back({offset, size});
        writer.writeRecord(name, &tag, sizeof(tag));
        continue;
      }
    }
    auto [data, size] = reader.getRecord(name);
    // Every storage of kTagSize bytes or more must hold a tag, or its real
    // bytes could pass for one: a record that cannot be read in place (not
    // stored uncompressed) declines the whole archive.
    if (data_record && size >= kTagSize) return std::nullopt;
    const std::string bytes(static_cast<const char*>(data.get()), size);
    // Archives whose loading reads tensor values (quantized tensors, custom
    // classes such as packed parameters, __setstate__) would read tags.
    if ((name == "data.pkl" || name == "constants.pkl") &&
        (contains(bytes, "_rebuild_qtensor") || contains(bytes, "torch.classes") || contains(bytes, "_rebuild_sparse") ||
         contains(bytes, "_rebuild_mkldnn"))) {
      return std::nullopt;
    }
    if (name.rfind("code/", 0) == 0 && (contains(bytes, "__setstate__") || contains(bytes, "torch.classes"))) {
      return std::nullopt;
    }
    writer.writeRecord(name, bytes.data(), bytes.size());
  }
  writer.writeEndOfFile();

  std::istringstream in(copy.str());
  torch::jit::Module module = torch::jit::load(in, at::kCPU, extra_files);

  // Point every tagged storage at its record; any storage that does not hold
  // a valid tag means the model is not what this path expects. Before the
  // graph constants become attributes: they hold real bytes, not tags.
  bool ok = true;
  std::set<const void*> done;
  rewrite_tensors(module, [&](const std::string&, format::TensorKind, const at::Tensor& t) {
    c10::StorageImpl* storage = t.storage().unsafeGetStorageImpl();
    if (!done.insert(storage).second || storage->nbytes() < kTagSize) return t;
    uint64_t tag = 0;
    std::memcpy(&tag, storage->data(), sizeof(tag));
    if (tag >= tagged.size() || tagged[tag].size != storage->nbytes()) {
      ok = false;
      return t;
    }
    auto* keep = new std::shared_ptr<const MappedSource>(file);
    void* data = file->region.mutable_data() + tagged[tag].offset;
    storage->set_data_ptr_noswap(c10::DataPtr(data, keep, &release_mapping, c10::Device(c10::kCPU)));
    return t;
  });
  if (!ok) return std::nullopt;
  hoist_tensor_constants(module);
  return module;
}

}  // namespace zcwrap::detail
