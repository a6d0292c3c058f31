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

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include <caffe2/serialize/inline_container.h>

#include "byte_reader.hpp"
#include "constants.hpp"
#include "torch_util.hpp"
#include "tensor_walk.hpp"
#include "file_util.hpp"
#include "zcwrap/error.hpp"

namespace zcwrap::detail {
namespace {

constexpr size_t kTagSize = 8;

}  // namespace

std::map<std::string, ZipEntry> zip_central_directory(const uint8_t* base, uint64_t n) {
  std::map<std::string, ZipEntry> out;
  ByteReader in(base, n);
  uint32_t signature = 0;
  // The end-of-central-directory record: 22 bytes, then a comment of up to
  // 65535; found by its signature, from the end.
  if (n < 22) return out;
  uint64_t eocd = n - 22;
  const uint64_t lowest = n > 22 + 65535 ? n - 22 - 65535 : 0;
  for (;;) {
    if (in.seek(eocd) && in.read_u32(&signature) && signature == 0x06054b50) break;
    if (eocd == lowest) return out;
    --eocd;
  }
  uint16_t entries16 = 0;
  uint32_t cd32 = 0;
  if (!in.seek(eocd + 10) || !in.read_u16(&entries16) || !in.skip(4) || !in.read_u32(&cd32)) return out;
  uint64_t entries = entries16, cd = cd32;
  // Zip64: the real counts are in the zip64 end record the locator names.
  uint64_t eocd64 = 0;
  if ((cd == 0xffffffffu || entries == 0xffff) && eocd >= 20 && in.seek(eocd - 20) && in.read_u32(&signature) &&
      signature == 0x07064b50 && in.skip(4) && in.read_u64(&eocd64)) {
    if (!in.seek(eocd64) || !in.read_u32(&signature) || signature != 0x06064b50 || !in.seek(eocd64 + 32) ||
        !in.read_u64(&entries) || !in.skip(8) || !in.read_u64(&cd)) {
      return out;
    }
  }
  if (!in.seek(cd)) return {};
  for (uint64_t i = 0; i < entries; ++i) {
    ZipEntry e;
    uint32_t compressed = 0, size = 0;
    uint16_t name_len = 0, extra_len = 0, comment_len = 0;
    if (!in.read_u32(&signature) || signature != 0x02014b50 || !in.skip(6) || !in.read_u16(&e.method) ||
        !in.skip(8) || !in.read_u32(&compressed) || !in.read_u32(&size) || !in.read_u16(&name_len) ||
        !in.read_u16(&extra_len) || !in.read_u16(&comment_len) || !in.skip(12)) {
      return {};
    }
    e.compressed = compressed;
    e.size = size;
    std::string name;
    if (!in.read_string(name_len, &name)) return {};
    // Zip64: sizes that do not fit 32 bits are in extra field 0x0001, in order.
    const uint64_t extra_end = in.position() + extra_len;
    if (extra_end > n) return {};
    while (in.position() + 4 <= extra_end) {
      uint16_t id = 0, len = 0;
      in.read_u16(&id);
      in.read_u16(&len);
      const uint64_t field_end = in.position() + len;
      if (field_end > extra_end) break;
      if (id == 0x0001) {
        if (e.size == 0xffffffffu && in.position() + 8 <= field_end) in.read_u64(&e.size);
        if (e.compressed == 0xffffffffu && in.position() + 8 <= field_end) in.read_u64(&e.compressed);
      }
      in.seek(field_end);
    }
    if (!in.seek(extra_end) || !in.skip(comment_len)) return {};
    // Keyed by record name: the reader strips the "<archive>/" prefix too.
    const size_t slash = name.find('/');
    if (slash != std::string::npos) out.emplace(name.substr(slash + 1), e);
  }
  return out;
}

namespace {

bool contains(const std::string& haystack, const char* needle) { return haystack.find(needle) != std::string::npos; }

// Reads of the mapped file, for LibTorch's zip reader.
class RegionAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit RegionAdapter(std::shared_ptr<const ModelSource> source) : source_(std::move(source)) {}
  size_t size() const override { return source_->region.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    const size_t total = source_->region.size();
    if (pos >= total) return 0;
    n = std::min<uint64_t>(n, total - pos);
    std::memcpy(buf, source_->region.data() + pos, n);
    return n;
  }

 private:
  std::shared_ptr<const ModelSource> source_;
};

// The deleter of storages that point into the file's mapping; it also marks
// them (is_mapped_file_storage).
void release_mapping(void* ctx) { delete static_cast<std::shared_ptr<const ModelSource>*>(ctx); }

}  // namespace

std::shared_ptr<const ModelSource> open_model_source(const std::string& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
  // before the type check below could refuse it.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd.valid()) throw Error(ErrorCode::kInput, path + ": cannot open: " + errno_text(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw Error(ErrorCode::kInput, path + ": cannot stat: " + errno_text(errno));
  if (S_ISDIR(st.st_mode)) throw Error(ErrorCode::kInput, path + ": is a folder, not a model file");
  if (!S_ISREG(st.st_mode)) {
    throw Error(ErrorCode::kInput, path + ": not a regular file (" + file_type_name(st.st_mode) +
                                       "); save the model to a file first");
  }
  if (st.st_size == 0) throw Error(ErrorCode::kBadModel, path + ": empty file, not a TorchScript archive");
  MappedRegion region = MappedRegion::map_fd(fd.get(), static_cast<uint64_t>(st.st_size), path);
  return std::make_shared<const ModelSource>(ModelSource{path, std::move(fd), std::move(region)});
}

std::shared_ptr<caffe2::serialize::ReadAdapterInterface> read_adapter(std::shared_ptr<const ModelSource> source) {
  return std::make_shared<RegionAdapter>(std::move(source));
}

bool is_mapped_file_storage(const c10::Storage& storage) {
  return storage.data_ptr().get_deleter() == &release_mapping;
}

std::optional<FileSpan> mapped_file_span(const c10::Storage& storage) {
  if (!is_mapped_file_storage(storage)) return std::nullopt;
  const auto& source = *static_cast<const std::shared_ptr<const ModelSource>*>(storage.data_ptr().get_context());
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

std::optional<torch::jit::Module> load_mapped(const std::shared_ptr<const ModelSource>& file,
                                              torch::jit::ExtraFilesMap& extra_files) {
  caffe2::serialize::PyTorchStreamReader reader(read_adapter(file));
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
    auto* keep = new std::shared_ptr<const ModelSource>(file);
    void* data = file->region.mutable_data() + tagged[tag].offset;
    storage->set_data_ptr_noswap(c10::DataPtr(data, keep, &release_mapping, c10::Device(c10::kCPU)));
    return t;
  });
  if (!ok) return std::nullopt;
  hoist_tensor_constants(module);
  return module;
}

}  // namespace zcwrap::detail
