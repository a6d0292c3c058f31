#include "aoti.hpp"

#include <dlfcn.h>
#include <link.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/inductor/aoti_runtime/interface.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/inductor/aoti_torch/tensor_converter.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>
#include <xxhash.h>

#include "file_util.hpp"
#include "store.hpp"
#include "messages.hpp"
#include "placement.hpp"
#include "torch_util.hpp"
#include "zcwrap/error.hpp"
#include "zcwrap/version.hpp"

namespace zcwrap::detail {
namespace {

using nlohmann::json;

constexpr int kSkeletonVersion = 1;
constexpr char kAotiDir[] = "data/aotinductor/";
constexpr char kWeightsDir[] = "data/weights/";

// ---------------------------------------------------------------------------
// Bounded reads of the ELF file and zip headers inside a mapped package.

uint16_t le16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
uint32_t le32(const uint8_t* p) { return uint32_t(le16(p)) | (uint32_t(le16(p + 2)) << 16); }
uint64_t le64(const uint8_t* p) { return uint64_t(le32(p)) | (uint64_t(le32(p + 4)) << 32); }

bool inside(uint64_t offset, uint64_t length, uint64_t size) { return offset <= size && length <= size - offset; }

// What zcwrap needs to know of a model .so before anything maps it: that
// every segment the loader maps lies inside the file (a truncated .so would
// otherwise load and fault, SIGBUS, on its first touch of a missing page),
// and where the weights linked into it are (_binary_constants_bin_start/end,
// as file offsets; absent when the symbol table was stripped).
struct ElfFacts {
  std::string error;  // empty: looks loadable
  std::optional<std::pair<uint64_t, uint64_t>> constants;
  uint64_t end = 0;  // where the ELF file's own contents end (its last section or header table)
};

ElfFacts read_elf(const uint8_t* p, uint64_t n) {
  ElfFacts facts;
  auto fail = [&](const std::string& what) {
    facts.error = what;
    return facts;
  };
  if (n < 64 || std::memcmp(p, "\x7f" "ELF", 4) != 0) return fail("not an ELF shared object (bad magic)");
  if (p[4] != 2 || p[5] != 1) return fail("not a 64-bit little-endian ELF file");
  if (le16(p + 16) != 3) return fail("not a shared object (ELF type " + std::to_string(le16(p + 16)) + ")");
  const uint64_t phoff = le64(p + 32), shoff = le64(p + 40);
  const uint16_t phentsize = le16(p + 54), phnum = le16(p + 56), shentsize = le16(p + 58), shnum = le16(p + 60);
  if (phentsize < 56 || !inside(phoff, uint64_t(phentsize) * phnum, n)) return fail("program headers past the end of the file (truncated)");
  for (uint16_t i = 0; i < phnum; ++i) {
    const uint8_t* ph = p + phoff + uint64_t(i) * phentsize;
    if (le32(ph) == 1 /* PT_LOAD */ && !inside(le64(ph + 8), le64(ph + 32), n)) {
      return fail("segment " + std::to_string(i) + " ends at byte " + std::to_string(le64(ph + 8) + le64(ph + 32)) +
                  ", past the end of the " + std::to_string(n) + "-byte file (truncated)");
    }
  }
  if (shnum == 0) return facts;
  if (shentsize < 64 || !inside(shoff, uint64_t(shentsize) * shnum, n)) return fail("section headers past the end of the file (truncated)");
  facts.end = shoff + uint64_t(shentsize) * shnum;
  struct Section {
    uint32_t type;
    uint64_t addr, offset, size, entsize;
    uint32_t link;
  };
  std::vector<Section> sections;
  for (uint16_t i = 0; i < shnum; ++i) {
    const uint8_t* sh = p + shoff + uint64_t(i) * shentsize;
    sections.push_back({le32(sh + 4), le64(sh + 16), le64(sh + 24), le64(sh + 32), le64(sh + 56), le32(sh + 40)});
    if (sections.back().type != 8 /* NOBITS */ && !inside(sections.back().offset, sections.back().size, n)) {
      return fail("section " + std::to_string(i) + " past the end of the file (truncated)");
    }
    if (sections.back().type != 8) facts.end = std::max(facts.end, sections.back().offset + sections.back().size);
  }
  auto file_offset = [&](uint64_t addr) -> std::optional<uint64_t> {
    for (const Section& s : sections) {
      if (s.type != 8 && s.addr != 0 && addr >= s.addr && addr - s.addr <= s.size) return addr - s.addr + s.offset;
    }
    return std::nullopt;
  };
  std::optional<uint64_t> start, end;
  for (const Section& s : sections) {
    if ((s.type != 2 /* SYMTAB */ && s.type != 11 /* DYNSYM */) || s.entsize < 24 || s.link >= sections.size()) continue;
    const Section& strings = sections[s.link];
    for (uint64_t off = 0; off + 24 <= s.size; off += s.entsize) {
      const uint8_t* sym = p + s.offset + off;
      const uint32_t name = le32(sym);
      if (name >= strings.size) continue;
      const char* text = reinterpret_cast<const char*>(p + strings.offset + name);
      const size_t room = strings.size - name;
      const size_t len = strnlen(text, room);
      if (len == room) continue;
      const std::string_view sv(text, len);
      if (sv == "_binary_constants_bin_start") start = file_offset(le64(sym + 8));
      if (sv == "_binary_constants_bin_end") end = file_offset(le64(sym + 8));
    }
  }
  if (start && end && *start <= *end) facts.constants = std::make_pair(*start, *end);
  return facts;
}

// A stored (uncompressed) zip entry's local header at `header` of the
// mapped file: its data can then be used in place.
bool stored_entry(const uint8_t* file, uint64_t size, uint64_t header) {
  return inside(header, 30, size) && le32(file + header) == 0x04034b50 && le16(file + header + 8) == 0;
}

// PyTorchStreamReader over bytes in memory (a weight file inside the
// package mapping), without copying them into a stream.
class SliceAdapter : public caffe2::serialize::ReadAdapterInterface {
 public:
  SliceAdapter(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  size_t size() const override { return size_; }
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/) const override {
    if (pos >= size_) return 0;
    n = std::min<uint64_t>(n, size_ - pos);
    std::memcpy(buf, data_ + pos, n);
    return n;
  }

 private:
  const uint8_t* data_;
  size_t size_;
};

// ---------------------------------------------------------------------------
// The model .so: loading it where the caller has not made LibTorch global,
// and the C interface every AOTInductor model exports.

// A model .so has no DT_NEEDED entry for LibTorch: its aoti_torch_* imports
// resolve only against libraries in the global scope. A program linked with
// LibTorch has it there; Python's torch (and this library inside a Python
// extension) loads it RTLD_LOCAL. Re-opening the library that defines the
// shim with RTLD_NOLOAD | RTLD_GLOBAL promotes the copy already loaded (no
// second copy, nothing else changes), as `sys.setdlopenflags(RTLD_GLOBAL)`
// before `import torch` would have done. torch 2.14's own loader does not do
// this (docs/FORMAT.md, "aot_inductor").
//
// The library is found by the address of a shim function, among the loaded
// objects' segments (dl_iterate_phdr), not with dladdr, which also looks for
// the nearest symbol: a scan of LibTorch's symbol table, 1.1 ms of a
// worker's 12 ms unwrap.
void make_libtorch_global() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct Search {
      uintptr_t address;
      std::string path;
    } search{reinterpret_cast<uintptr_t>(&aoti_torch_dtype_float32), {}};
    ::dl_iterate_phdr(
        [](dl_phdr_info* object, size_t, void* data) {
          auto* s = static_cast<Search*>(data);
          for (ElfW(Half) i = 0; i < object->dlpi_phnum; ++i) {
            const ElfW(Phdr)& segment = object->dlpi_phdr[i];
            const uintptr_t start = object->dlpi_addr + segment.p_vaddr;
            if (segment.p_type == PT_LOAD && s->address - start < segment.p_memsz) {
              s->path = object->dlpi_name != nullptr ? object->dlpi_name : "";
              return 1;
            }
          }
          return 0;
        },
        &search);
    if (!search.path.empty()) {
      if (void* h = ::dlopen(search.path.c_str(), RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL)) {
        (void)h;  // kept open: the promotion lasts as long as the process
      }
    }
  });
}

struct Api {
  decltype(&AOTInductorModelContainerCreateWithDevice) create = nullptr;
  decltype(&AOTInductorModelContainerCreateWithExternalConstants) create_external = nullptr;
  decltype(&AOTInductorModelContainerDelete) destroy = nullptr;
  decltype(&AOTInductorModelContainerRun) run = nullptr;
  decltype(&AOTInductorModelContainerGetNumInputs) num_inputs = nullptr;
  decltype(&AOTInductorModelContainerGetNumOutputs) num_outputs = nullptr;
  decltype(&AOTInductorModelContainerGetNumConstants) num_constants = nullptr;
  decltype(&AOTInductorModelContainerGetConstantName) constant_name = nullptr;
  decltype(&AOTInductorModelContainerGetConstantOriginalFQN) constant_fqn = nullptr;
  decltype(&AOTInductorModelContainerGetConstantFromFolded) constant_folded = nullptr;
  decltype(&AOTInductorModelContainerGetConstantDtype) constant_dtype = nullptr;
  decltype(&AOTInductorModelContainerGetConstantDataSize) constant_size = nullptr;
  decltype(&AOTInductorModelContainerExtractConstantsMapEntries) extract = nullptr;
  decltype(&AOTInductorModelContainerGetCallSpec) call_spec = nullptr;
  decltype(&AOTInductorGetLastError) last_error = nullptr;  // optional
};

// A dlopen'ed model library, closed on destruction.
class Library {
 public:
  Library() = default;
  Library(const Library&) = delete;
  Library& operator=(const Library&) = delete;
  ~Library() {
    if (handle_ != nullptr) ::dlclose(handle_);
  }

  // `path` is what dlopen opens; `origin` names it in messages.
  void open(const std::string& path, const std::string& origin) {
    make_libtorch_global();
    ::dlerror();
    handle_ = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle_ == nullptr) {
      const char* e = ::dlerror();
      std::string why = e != nullptr ? e : "unknown dlopen error";
      if (const size_t at = why.find(path + ": "); at != std::string::npos) why.erase(at, path.size() + 2);
      std::string hint;
      if (why.find("undefined symbol") != std::string::npos) {
        hint = ": it needs a symbol this LibTorch (" + std::string(kLibTorchVersion) +
               ") does not have, so it was compiled by another torch; compile it again with torch " +
               kLibTorchVersion;
      } else if (why.find("failed to map segment") != std::string::npos) {
        hint = ": the folder it is in may be on a file system mounted noexec";
      }
      throw Error(ErrorCode::kBadModel, origin + ": cannot load the compiled model (" + why + ")" + hint);
    }
    auto need = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(handle_, name));
      if (fn == nullptr) {
        throw Error(ErrorCode::kBadModel, origin + ": the compiled model has no " + name +
                                              ": it was compiled by a torch older than this LibTorch (" +
                                              kLibTorchVersion + "); compile it again");
      }
    };
    need(api_.create, "AOTInductorModelContainerCreateWithDevice");
    need(api_.create_external, "AOTInductorModelContainerCreateWithExternalConstants");
    need(api_.destroy, "AOTInductorModelContainerDelete");
    need(api_.run, "AOTInductorModelContainerRun");
    need(api_.num_inputs, "AOTInductorModelContainerGetNumInputs");
    need(api_.num_outputs, "AOTInductorModelContainerGetNumOutputs");
    need(api_.num_constants, "AOTInductorModelContainerGetNumConstants");
    need(api_.constant_name, "AOTInductorModelContainerGetConstantName");
    need(api_.constant_fqn, "AOTInductorModelContainerGetConstantOriginalFQN");
    need(api_.constant_folded, "AOTInductorModelContainerGetConstantFromFolded");
    need(api_.constant_dtype, "AOTInductorModelContainerGetConstantDtype");
    need(api_.constant_size, "AOTInductorModelContainerGetConstantDataSize");
    need(api_.extract, "AOTInductorModelContainerExtractConstantsMapEntries");
    need(api_.call_spec, "AOTInductorModelContainerGetCallSpec");
    api_.last_error = reinterpret_cast<decltype(api_.last_error)>(::dlsym(handle_, "AOTInductorGetLastError"));
  }

  const Api& api() const { return api_; }

  // Throws Error(kBadModel) with the runtime's message unless `rc` is success.
  void check(AOTIRuntimeError rc, const std::string& where, const char* what) const {
    if (rc == AOTI_RUNTIME_SUCCESS) return;
    std::string message;
    const char* text = nullptr;
    if (api_.last_error != nullptr && api_.last_error(&text) == AOTI_RUNTIME_SUCCESS && text != nullptr) {
      message = text;
    }
    if (const size_t nl = message.find('\n'); nl != std::string::npos) message.resize(nl);
    throw Error(ErrorCode::kBadModel,
                where + ": " + what + " failed" + (message.empty() ? "" : ": " + message) +
                    (message.empty() ? " (the model printed why on standard error)" : ""));
  }

 private:
  void* handle_ = nullptr;
  Api api_;
};

// A container of a loaded library, deleted on destruction.
class Container {
 public:
  Container(const Library& library) : library_(&library) {}
  Container(const Container&) = delete;
  Container& operator=(const Container&) = delete;
  ~Container() {
    if (handle_ != nullptr) library_->api().destroy(handle_);
  }
  AOTInductorModelContainerHandle* out() { return &handle_; }
  AOTInductorModelContainerHandle get() const { return handle_; }

 private:
  const Library* library_;
  AOTInductorModelContainerHandle handle_ = nullptr;
};

std::string base_name(const std::string& name) { return name.substr(name.find_last_of('/') + 1); }

// The package's model .so and its kernel files in a temporary folder of
// their own, for packing only. Not a memfd opened as /proc/self/fd/N: glibc
// finds an already loaded library by its name before it looks at the file,
// and a model .so is never unloaded (its STB_GNU_UNIQUE symbols make dlclose
// a no-op), so a second package would get the first one's code under a
// reused descriptor number. The folder is removed with this object.
class TempModel {
 public:
  struct File {
    std::string name;  // base name in the folder
    const uint8_t* data;
    uint64_t size;
  };
  TempModel(const File& library, const std::vector<File>& kernels, const std::string& origin) {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/zcwrap-pack-XXXXXX";
    std::vector<char> name(pattern.begin(), pattern.end());
    name.push_back('\0');
    if (::mkdtemp(name.data()) == nullptr) {
      throw Error(ErrorCode::kWrite, origin + ": cannot create a temporary folder " + pattern + ": " + errno_text(errno));
    }
    dir_ = name.data();
    try {
      library_ = write(library);
      for (const File& k : kernels) write(k);
    } catch (...) {
      remove();
      throw;
    }
  }
  ~TempModel() { remove(); }
  TempModel(const TempModel&) = delete;
  TempModel& operator=(const TempModel&) = delete;
  const std::string& library() const { return library_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string write(const File& f) {
    const std::string path = dir_ + "/" + f.name;
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd.valid()) throw Error(ErrorCode::kWrite, path + ": cannot create: " + errno_text(errno));
    files_.push_back(path);
    for (uint64_t done = 0; done < f.size;) {
      const ssize_t n = ::write(fd.get(), f.data + done, f.size - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw Error(ErrorCode::kWrite, path + ": cannot write: " + errno_text(errno));
      done += static_cast<uint64_t>(n);
    }
    return path;
  }

  void remove() {
    for (const std::string& f : files_) ::unlink(f.c_str());
    ::rmdir(dir_.c_str());
  }

  std::string dir_, library_;
  std::vector<std::string> files_;
};

// torch 2.14's AOTInductorModelContainerCreateWithExternalConstants always
// runs constant folding, and a model compiled without runtime constant
// folding (the default) then prints "[WARNING] Calling constant_folding in
// model, but compiled with config: aot_inductor.use_runtime_constant_folding
// =False" to stderr: once per unwrap, in every worker, about nothing the
// user did. While a model is created, fd 2 goes to a memfd; afterwards
// everything written there is written to stderr again except that line.
// Other threads' output in that window comes out after it, not lost. One
// at a time (unwrap is thread-safe): two overlapping redirections would
// restore each other's memfd as stderr.
class QuietConstantFolding {
 public:
  QuietConstantFolding() : lock_(mutex()) {
    std::fflush(stderr);
    saved_ = UniqueFd(::dup(2));
    capture_ = UniqueFd(::memfd_create("zcwrap-aoti-stderr", MFD_CLOEXEC));
    if (!saved_.valid() || !capture_.valid() || ::dup2(capture_.get(), 2) < 0) {
      capture_ = UniqueFd();
    }
  }
  ~QuietConstantFolding() {
    if (!capture_.valid()) return;
    std::fflush(stderr);
    ::dup2(saved_.get(), 2);
    std::string text;
    char buf[4096];
    ::lseek(capture_.get(), 0, SEEK_SET);
    for (ssize_t n; (n = ::read(capture_.get(), buf, sizeof(buf))) > 0;) text.append(buf, static_cast<size_t>(n));
    static constexpr std::string_view kNoise =
        "[WARNING] Calling constant_folding in model, but compiled with config: "
        "aot_inductor.use_runtime_constant_folding=False\n";
    for (size_t at; (at = text.find(kNoise)) != std::string::npos;) text.erase(at, kNoise.size());
    for (size_t done = 0; done < text.size();) {
      const ssize_t n = ::write(2, text.data() + done, text.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
  }
  QuietConstantFolding(const QuietConstantFolding&) = delete;
  QuietConstantFolding& operator=(const QuietConstantFolding&) = delete;

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  std::lock_guard<std::mutex> lock_;
  UniqueFd saved_, capture_;
};

// ---------------------------------------------------------------------------
// The skeleton.

struct Cut {
  uint64_t offset = 0;  // in the record
  uint64_t length = 0;
  uint64_t tensor = 0;  // manifest index; its storage holds the bytes
};

struct Record {
  std::string name;
  uint64_t size = 0;
  std::vector<Cut> cuts;  // ascending, not overlapping
};

struct SkeletonInfo {
  std::string device;
  std::string library;                  // the .so's record name
  std::string library_digest;           // XXH3-64 hex of the .so with its cuts as zeros
  std::vector<std::string> constants;   // internal names, manifest order
  std::vector<Record> records;          // package order
  json metadata;                        // the package's *_metadata.json, as read
};

json to_json(const SkeletonInfo& s, const std::vector<std::string>& fqns) {
  json records = json::array();
  for (const Record& r : s.records) {
    json cuts = json::array();
    for (const Cut& c : r.cuts) cuts.push_back({c.offset, c.length, c.tensor});
    records.push_back({{"name", r.name}, {"size", r.size}, {"cuts", cuts}});
  }
  json constants = json::array();
  for (size_t i = 0; i < s.constants.size(); ++i) constants.push_back({{"name", s.constants[i]}, {"fqn", fqns[i]}});
  return {{"format", kSkeletonVersion}, {"device", s.device}, {"library", s.library},
          {"library_xxh3", s.library_digest}, {"constants", constants}, {"records", records},
          {"metadata", s.metadata}, {"torch", kLibTorchVersion}};
}

// The skeleton's record stream: aoti.json, then records/N.
class SkeletonReader {
 public:
  // Reads the skeleton in place in the blob's mapping where it is stored
  // uncompressed (as zcwrap 0.2 packs it), else from its decompressed copy.
  SkeletonReader(const BlobFile& blob, size_t index) : where_(blob.path() + ": model '" + blob.manifest().models[index].name + "'") {
    if (const std::optional<std::string_view> in_place = blob.skeleton_in_place(index)) {
      bytes_ = *in_place;
    } else {
      raw_ = blob.skeleton(index);
      bytes_ = raw_;
    }
    try {
      reader_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(std::make_shared<SliceAdapter>(
          reinterpret_cast<const uint8_t*>(bytes_.data()), bytes_.size()));
      const std::string text = record("aoti.json");
      const json j = json::parse(text);
      if (j.at("format").get<int>() != kSkeletonVersion) {
        throw Error(ErrorCode::kBadBlob, where_ + ": aot_inductor skeleton format " + j.at("format").dump() +
                                             " is not supported by this zcwrap; upgrade zcwrap");
      }
      info_.device = j.at("device").get<std::string>();
      info_.library = j.at("library").get<std::string>();
      info_.library_digest = j.at("library_xxh3").get<std::string>();
      for (const json& c : j.at("constants")) info_.constants.push_back(c.at("name").get<std::string>());
      for (const json& r : j.at("records")) {
        Record rec{r.at("name").get<std::string>(), r.at("size").get<uint64_t>(), {}};
        uint64_t end = 0;
        for (const json& c : r.at("cuts")) {
          Cut cut{c.at(0).get<uint64_t>(), c.at(1).get<uint64_t>(), c.at(2).get<uint64_t>()};
          if (cut.offset < end || !inside(cut.offset, cut.length, rec.size)) {
            throw Error(ErrorCode::kBadBlob, where_ + ": record '" + rec.name + "' has a cut outside it or out of order");
          }
          end = cut.offset + cut.length;
          rec.cuts.push_back(cut);
        }
        info_.records.push_back(std::move(rec));
      }
      info_.metadata = j.value("metadata", json::object());
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(ErrorCode::kBadBlob, where_ + ": malformed aot_inductor skeleton: " + first_line(e));
    }
  }

  const SkeletonInfo& info() const { return info_; }
  const std::string& where() const { return where_; }

  // Record `i`'s stored bytes (its cuts left out), checked against its
  // size: a view of the skeleton's bytes, valid while this reader lives.
  std::string_view stored(size_t i) {
    const std::string name = "records/" + std::to_string(i);
    std::string_view bytes;
    try {
      const uint64_t size = reader_->getRecordSize(name);
      const uint64_t offset = reader_->getRecordOffset(name);
      const auto* base = reinterpret_cast<const uint8_t*>(bytes_.data());
      if (!stored_entry(base, bytes_.size(), reader_->getRecordHeaderOffset(name)) ||
          !inside(offset, size, bytes_.size())) {
        throw std::runtime_error("compressed, or outside the skeleton");
      }
      bytes = bytes_.substr(offset, size);
    } catch (const std::exception& e) {
      throw Error(ErrorCode::kBadBlob, where_ + ": malformed aot_inductor skeleton (record '" + name + "'): " +
                                           first_line(e));
    }
    uint64_t cut = 0;
    for (const Cut& c : info_.records[i].cuts) cut += c.length;
    if (bytes.size() + cut != info_.records[i].size) {
      throw Error(ErrorCode::kBadBlob, where_ + ": record '" + info_.records[i].name + "' holds " +
                                           std::to_string(bytes.size()) + " bytes, not " +
                                           std::to_string(info_.records[i].size - cut));
    }
    return bytes;
  }

  size_t find(const std::string& name) const {
    for (size_t i = 0; i < info_.records.size(); ++i) {
      if (info_.records[i].name == name) return i;
    }
    throw Error(ErrorCode::kBadBlob, where_ + ": aot_inductor skeleton lacks record '" + name + "'");
  }

 private:
  std::string record(const std::string& name) {
    try {
      auto [data, size] = reader_->getRecord(name);
      return std::string(static_cast<const char*>(data.get()), size);
    } catch (const std::exception& e) {
      throw Error(ErrorCode::kBadBlob, where_ + ": malformed aot_inductor skeleton (record '" + name + "'): " +
                                           first_line(e));
    }
  }

  std::string where_;
  std::string raw_;         // the decompressed skeleton, when it is compressed in the blob
  std::string_view bytes_;  // the skeleton: raw_, or in place in the mapping
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader_;
  SkeletonInfo info_;
};

// Calls `piece(record_offset, stored_offset, length)` for every stored
// piece of a record and `hole(cut)` for every cut, in order.
template <class Piece, class Hole>
void walk_record(const Record& r, Piece piece, Hole hole) {
  uint64_t pos = 0, from = 0;
  for (const Cut& c : r.cuts) {
    piece(pos, from, c.offset - pos);
    from += c.offset - pos;
    hole(c);
    pos = c.offset + c.length;
  }
  piece(pos, from, r.size - pos);
}

// ---------------------------------------------------------------------------
// Packing.

// A tensor over `nbytes` of the package's mapping at `offset`; its storage
// keeps the package open and mapped.
at::Tensor tensor_over(const std::shared_ptr<const ModelSource>& source, uint64_t offset, uint64_t nbytes,
                       at::ScalarType dtype, at::IntArrayRef sizes, at::IntArrayRef strides, int64_t storage_offset) {
  auto* keep = new std::shared_ptr<const ModelSource>(source);
  c10::DataPtr ptr(const_cast<uint8_t*>(source->region.data()) + offset, keep,
                   [](void* ctx) { delete static_cast<std::shared_ptr<const ModelSource>*>(ctx); },
                   c10::Device(at::kCPU));
  c10::Storage storage(c10::Storage::use_byte_size_t(), static_cast<int64_t>(nbytes), std::move(ptr), nullptr, false);
  return at::empty({0}, at::TensorOptions().dtype(dtype)).set_(storage, storage_offset, sizes, strides);
}

// Bytes a strided tensor spans in its storage, or nullopt when it has none.
std::optional<uint64_t> extent_bytes(at::IntArrayRef sizes, at::IntArrayRef strides, int64_t offset, size_t itemsize) {
  uint64_t last = static_cast<uint64_t>(offset);
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] == 0) return 0;
    if (sizes[d] < 0 || strides[d] < 0) return std::nullopt;
    last += static_cast<uint64_t>(sizes[d] - 1) * static_cast<uint64_t>(strides[d]);
  }
  return (last + 1) * itemsize;
}

// A constant the compiled model loaded, as the CPU sees it: itself, or, on
// a GPU, a copy of its whole storage with its sizes, strides and offset.
at::Tensor on_host(const at::Tensor& t) {
  if (t.device().is_cpu()) return t;
  const int64_t nbytes = static_cast<int64_t>(t.storage().nbytes());
  const at::Tensor bytes = at::empty({0}, t.options().dtype(at::kByte)).set_(t.storage(), 0, {nbytes}, {1}).cpu();
  return at::empty({0}, at::TensorOptions().dtype(t.scalar_type()))
      .set_(bytes.storage(), t.storage_offset(), t.sizes(), t.strides());
}

std::string digest_hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

bool aoti_supported() { return true; }

AotiPackage read_aoti_package(const std::shared_ptr<const ModelSource>& source, const std::string& model) {
  const std::string& path = source->path;
  const auto map = source;
  const uint8_t* file = source->region.data();
  const uint64_t file_size = source->region.size();
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  std::vector<std::string> names;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(
        std::make_shared<SliceAdapter>(file, file_size));
    names = reader->getAllRecords();
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kBadModel, path + ": not a readable .pt2 archive (" + first_line(e) + ")");
  }
  if (pt2_kind(names) != Pt2Kind::kAotiPackage) {
    throw Error(ErrorCode::kBadModel, path + ": not an AOTInductor package (no " + kAotiDir + " records)");
  }
  const std::vector<std::string> models = aoti_package_models(names);
  if (std::find(models.begin(), models.end(), model) == models.end()) {
    throw Error(ErrorCode::kBadModel, path + ": the package has no compiled model '" + model + "'");
  }
  const std::string model_dir = std::string(kAotiDir) + model + "/";

  // The bytes of a record: in place when stored, else read out (deflated).
  std::map<std::string, std::string> read_out;
  auto record_bytes = [&](const std::string& name) -> std::pair<const uint8_t*, uint64_t> {
    try {
      const uint64_t size = reader->getRecordSize(name);
      const uint64_t header = reader->getRecordHeaderOffset(name);
      const uint64_t offset = reader->getRecordOffset(name);
      if (stored_entry(file, file_size, header) && inside(offset, size, file_size)) return {file + offset, size};
      auto [data, n] = reader->getRecord(name);
      std::string& copy = read_out[name];
      copy.assign(static_cast<const char*>(data.get()), n);
      return {reinterpret_cast<const uint8_t*>(copy.data()), copy.size()};
    } catch (const std::exception& e) {
      throw Error(ErrorCode::kBadModel, path + ": cannot read record '" + name + "' (" + first_line(e) + ")");
    }
  };
  auto in_file = [&](const uint8_t* p) { return p >= file && p < file + file_size; };

  SkeletonInfo info;
  json metadata = json::object();
  std::optional<std::string> weights_config;
  std::set<std::string> used_weights;  // the weight files this model's weights_config.json names
  for (const std::string& r : names) {
    if (r.rfind(model_dir, 0) != 0) continue;
    if (r.size() > 3 && r.compare(r.size() - 3, 3, ".so") == 0) {
      if (!info.library.empty()) throw Error(ErrorCode::kBadModel, path + ": the package holds two .so files");
      info.library = r;
    } else if (r.size() > 14 && r.compare(r.size() - 14, 14, "_metadata.json") == 0 &&
               r.find(".wrapper_metadata.json") != std::string::npos) {
      const auto [p, n] = record_bytes(r);
      try {
        metadata = json::parse(p, p + n);
      } catch (const std::exception& e) {
        throw Error(ErrorCode::kBadModel, path + ": malformed " + r + ": " + first_line(e));
      }
    } else if (r == model_dir + "weights_config.json") {
      const auto [p, n] = record_bytes(r);
      weights_config.emplace(reinterpret_cast<const char*>(p), n);
    }
  }
  if (info.library.empty()) throw Error(ErrorCode::kBadModel, path + ": the package has no compiled model (.so) in " + model_dir);
  info.device = metadata.is_object() && metadata.contains("AOTI_DEVICE_KEY") && metadata["AOTI_DEVICE_KEY"].is_string()
                    ? metadata["AOTI_DEVICE_KEY"].get<std::string>()
                    : "cpu";
  info.metadata = metadata;
  const bool on_cuda = info.device == "cuda" || info.device.rfind("cuda:", 0) == 0;
  if (info.device != "cpu" && !on_cuda) {
    throw Error(ErrorCode::kDevice, path + ": a " + info.device + " package (AOTI_DEVICE_KEY in its metadata); " +
                                        "zcwrap packs cpu and cuda packages");
  }
  if (on_cuda) {
    // Its constants are read through the compiled model, which creates them
    // on its device.
    std::string why;
    if (!load_cuda_backend(&why) || !at::hasCUDA()) {
      throw Error(ErrorCode::kDevice,
                  path + ": a CUDA package (AOTI_DEVICE_KEY \"" + info.device + "\"): packing it reads its weights " +
                      "through the compiled model on a CUDA device, and this host has none" +
                      (why.empty() ? "" : " (" + why + ")") + "; pack it on a machine with CUDA");
    }
  }

  // Load the .so (its kernel files beside it) and list its constants.
  const auto [so, so_size] = record_bytes(info.library);
  const std::string so_origin = path + ": " + info.library;
  const ElfFacts elf = read_elf(so, so_size);
  if (!elf.error.empty()) throw Error(ErrorCode::kBadModel, so_origin + ": " + elf.error);
  std::vector<TempModel::File> kernels;
  for (const std::string& r : names) {
    if (r.rfind(model_dir, 0) == 0 && format::is_aoti_kernel_file(r)) {
      const auto [p, n] = record_bytes(r);
      kernels.push_back({base_name(r), p, n});
    }
  }
  const TempModel temp({base_name(info.library), so, so_size}, kernels, so_origin);
  Library library;
  library.open(temp.library(), so_origin);
  const Api& api = library.api();
  Container container(library);
  library.check(api.create(container.out(), 1, info.device.c_str(), temp.dir().c_str()), so_origin,
                "creating the model");

  struct ConstantInfo {
    std::string name, fqn;
    at::ScalarType dtype;
    uint64_t data_size;
  };
  std::vector<ConstantInfo> constants;
  size_t count = 0;
  library.check(api.num_constants(container.get(), &count), so_origin, "listing constants");
  for (size_t i = 0; i < count; ++i) {
    bool folded = false;
    library.check(api.constant_folded(container.get(), i, &folded), so_origin, "listing constants");
    if (folded) continue;  // computed from the others when the model is created
    const char* name = nullptr;
    const char* fqn = nullptr;
    int32_t dtype = 0;
    size_t size = 0;
    library.check(api.constant_name(container.get(), i, &name), so_origin, "listing constants");
    library.check(api.constant_fqn(container.get(), i, &fqn), so_origin, "listing constants");
    library.check(api.constant_dtype(container.get(), i, &dtype), so_origin, "listing constants");
    library.check(api.constant_size(container.get(), i, &size), so_origin, "listing constants");
    // The shim's dtype codes are c10::ScalarType's.
    constants.push_back({name, fqn != nullptr ? fqn : "", static_cast<at::ScalarType>(dtype), size});
    if (dtype_name(constants.back().dtype).empty()) {
      throw Error(ErrorCode::kBadModel, so_origin + ": constant '" + name + "' has a dtype (" +
                                            std::to_string(dtype) + ") the blob format cannot describe");
    }
  }

  AotiPackage out;
  out.device = info.device;
  std::map<std::string, Record> cuts_of;  // record name -> its cuts
  std::vector<std::string> paths;
  std::set<std::string> seen_paths;
  for (const ConstantInfo& c : constants) {
    std::string p = c.fqn.empty() || seen_paths.count(c.fqn) != 0 ? c.name : c.fqn;
    seen_paths.insert(p);
    paths.push_back(p);
    info.constants.push_back(c.name);
  }

  if (weights_config) {
    // package_constants_on_disk_format="pickle_weights": each constant is a
    // torch.save'd tensor in data/weights/, named by weights_config.json
    // (FQN -> [file, sizes, strides, storage offset]); its storage record is
    // cut out of the weight file.
    json config;
    try {
      config = json::parse(*weights_config);
    } catch (const std::exception& e) {
      throw Error(ErrorCode::kBadModel, path + ": malformed " + model_dir + "weights_config.json: " + first_line(e));
    }
    for (size_t i = 0; i < constants.size(); ++i) {
      const ConstantInfo& c = constants[i];
      if (!config.contains(c.fqn)) {
        throw Error(ErrorCode::kBadModel, path + ": weights_config.json has no entry for constant '" + c.fqn + "'");
      }
      std::string file_name;
      std::vector<int64_t> sizes, strides;
      int64_t offset = 0;
      try {
        const json& e = config.at(c.fqn);
        file_name = e.at(0).get<std::string>();
        sizes = e.at(1).get<std::vector<int64_t>>();
        strides = e.at(2).get<std::vector<int64_t>>();
        offset = e.at(3).get<int64_t>();
      } catch (const std::exception& e) {
        throw Error(ErrorCode::kBadModel, path + ": weights_config.json entry '" + c.fqn + "': " + first_line(e));
      }
      const std::string record = kWeightsDir + file_name;
      used_weights.insert(record);
      if (std::find(names.begin(), names.end(), record) == names.end()) {
        throw Error(ErrorCode::kBadModel, path + ": weight file " + record + " of constant '" + c.fqn + "' is missing");
      }
      const auto [wp, wn] = record_bytes(record);
      if (!in_file(wp)) throw Error(ErrorCode::kBadModel, path + ": weight file " + record + " is compressed in the package; zcwrap shares stored weight files only");
      std::string storage_name;
      uint64_t inner = 0, nbytes = 0;
      try {
        caffe2::serialize::PyTorchStreamReader weight(std::make_shared<SliceAdapter>(wp, wn));
        for (const std::string& r : weight.getAllRecords()) {
          if (r.rfind("data/", 0) == 0) {
            if (!storage_name.empty()) throw std::runtime_error("more than one storage");
            storage_name = r;
          }
        }
        if (storage_name.empty()) throw std::runtime_error("no storage record");
        nbytes = weight.getRecordSize(storage_name);
        inner = weight.getRecordOffset(storage_name);
        if (!stored_entry(wp, wn, weight.getRecordHeaderOffset(storage_name)) || !inside(inner, nbytes, wn)) {
          throw std::runtime_error("its storage record is compressed or outside it");
        }
      } catch (const std::exception& e) {
        throw Error(ErrorCode::kBadModel, path + ": weight file " + record +
                                              " is not a readable torch.save'd tensor (truncated or corrupt?): " +
                                              first_line(e));
      }
      const size_t itemsize = c10::elementSize(c.dtype);
      const std::optional<uint64_t> need = extent_bytes(sizes, strides, offset, itemsize);
      if (sizes.size() != strides.size() || !need || *need > nbytes) {
        throw Error(ErrorCode::kBadModel, path + ": weight file " + record + " holds " + std::to_string(nbytes) +
                                              " bytes, too few for constant '" + c.fqn + "'");
      }
      out.constants.push_back({paths[i], tensor_over(map, static_cast<uint64_t>(wp - file) + inner, nbytes, c.dtype,
                                                     sizes, strides, offset)});
      Record& r = cuts_of[record];
      r.cuts.push_back({inner, nbytes, i});
    }
  } else {
    // The weights are linked into the .so (the default), one after the
    // other in constant order, each data_size bytes: at
    // _binary_constants_bin_start, or, with force_mmap_weights, at the end
    // of the file. Each candidate is checked against the constants the
    // model loaded; the one that matches is cut out of the .so.
    const AOTInductorConstantMapEntry* entries = nullptr;
    size_t entry_count = 0;
    library.check(api.extract(container.get(), &entries, &entry_count, false), so_origin, "reading the constants");
    std::map<std::string, const at::Tensor*> by_fqn;
    for (size_t i = 0; i < entry_count; ++i) {
      by_fqn[entries[i].name] = torch::aot_inductor::tensor_handle_to_tensor_pointer(entries[i].handle);
    }
    uint64_t total = 0;
    std::vector<at::Tensor> loaded;  // on the CPU
    for (const ConstantInfo& c : constants) {
      auto it = by_fqn.find(c.fqn);
      if (it == by_fqn.end()) throw Error(ErrorCode::kBadModel, so_origin + ": the model did not load constant '" + c.fqn + "'");
      loaded.push_back(on_host(*it->second));
      total += c.data_size;
    }
    // force_mmap_weights appends them after the ELF file, from its next
    // page boundary (torch 2.14: 4 KiB), followed by a few bytes of its own.
    std::vector<uint64_t> candidates;
    if (elf.constants) candidates.push_back(elf.constants->first);
    for (const uint64_t page : {uint64_t(4096), uint64_t(16384), uint64_t(65536)}) {
      candidates.push_back((elf.end + page - 1) / page * page);
    }
    if (total <= so_size) candidates.push_back(so_size - total);
    std::optional<uint64_t> base;
    for (uint64_t start : candidates) {
      if (!inside(start, total, so_size)) continue;
      uint64_t pos = start;
      bool match = true;
      for (size_t i = 0; i < constants.size() && match; ++i) {
        const at::Tensor& t = loaded[i];
        const uint64_t n = constants[i].data_size;
        // data_size is padded (to 64 bytes): the tensor's own bytes come
        // first, then zeros.
        const uint64_t own = std::min<uint64_t>(n, t.storage().nbytes());
        match = (own == 0 || std::memcmp(so + pos, t.storage().data(), own) == 0);
        pos += n;
      }
      if (match) {
        base = start;
        break;
      }
    }
    uint64_t pos = base.value_or(0);
    for (size_t i = 0; i < constants.size(); ++i) {
      const at::Tensor& t = loaded[i];
      const uint64_t n = constants[i].data_size;
      if (base && in_file(so)) {
        out.constants.push_back({paths[i], tensor_over(map, static_cast<uint64_t>(so - file) + pos, n, t.scalar_type(),
                                                       t.sizes(), t.strides(), t.storage_offset())});
        cuts_of[info.library].cuts.push_back({pos, n, i});
      } else {
        // Layout not recognised (a stripped .so, another torch's layout):
        // the weights are shared from the data section all the same, but
        // the .so keeps its copy.
        at::Tensor copy = at::zeros({static_cast<int64_t>(n)}, at::kByte);
        const uint64_t own = std::min<uint64_t>(n, t.storage().nbytes());
        if (own != 0) std::memcpy(copy.data_ptr(), t.storage().data(), own);
        out.constants.push_back({paths[i], at::empty({0}, at::TensorOptions().dtype(t.scalar_type()))
                                               .set_(copy.storage(), t.storage_offset(), t.sizes(), t.strides())});
        out.unshared_bytes += n;
      }
      pos += n;
    }
  }

  // The skeleton: every record of the package, its cuts left out.
  std::string skeleton;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t n) {
    skeleton.append(static_cast<const char*>(data), n);
    return n;
  });
  std::vector<std::string> stored;
  XXH3_state_t* hash = XXH3_createState();
  XXH3_64bits_reset(hash);
  // This model's records and the package's own (its version, its byte
  // order); of a package of several models, not the others' folders nor
  // weight files only they use.
  std::vector<std::string> kept;
  for (const std::string& name : names) {
    const bool other_model = name.rfind(kAotiDir, 0) == 0 && name.rfind(model_dir, 0) != 0;
    const bool other_weights = models.size() > 1 && name.rfind(kWeightsDir, 0) == 0 && used_weights.count(name) == 0;
    if (!other_model && !other_weights) kept.push_back(name);
  }
  for (const std::string& name : kept) {
    const auto [p, n] = record_bytes(name);
    Record rec{name, n, {}};
    if (auto it = cuts_of.find(name); it != cuts_of.end()) {
      rec.cuts = it->second.cuts;
      std::sort(rec.cuts.begin(), rec.cuts.end(), [](const Cut& a, const Cut& b) { return a.offset < b.offset; });
    }
    std::string bytes;
    bytes.reserve(n);
    const bool library_record = name == info.library;
    static const std::vector<uint8_t> zeros(1 << 20, 0);
    walk_record(rec,
                [&](uint64_t off, uint64_t, uint64_t len) {
                  bytes.append(reinterpret_cast<const char*>(p) + off, len);
                  if (library_record) XXH3_64bits_update(hash, p + off, len);
                },
                [&](const Cut& c) {
                  for (uint64_t done = 0; library_record && done < c.length; done += zeros.size()) {
                    XXH3_64bits_update(hash, zeros.data(), std::min<uint64_t>(zeros.size(), c.length - done));
                  }
                });
    info.records.push_back(std::move(rec));
    stored.push_back(std::move(bytes));
  }
  info.library_digest = digest_hex(XXH3_64bits_digest(hash));
  XXH3_freeState(hash);
  const std::string meta = to_json(info, paths).dump();
  writer.writeRecord("aoti.json", meta.data(), meta.size());
  for (size_t i = 0; i < stored.size(); ++i) {
    writer.writeRecord("records/" + std::to_string(i), stored[i].data(), stored[i].size());
  }
  writer.writeEndOfFile();
  out.skeleton = std::move(skeleton);
  return out;
}

// ---------------------------------------------------------------------------
// Loading from a blob.

struct AotiModel::Impl {
  std::string library_path;
  UniqueFd library_fd;  // the placed .so, open and flock(LOCK_SH)ed so gc leaves it
  std::string kernels_path;
  UniqueFd kernels_fd;  // the placed kernel folder of a GPU package, likewise
  Library library;
  std::unique_ptr<Container> container;
  std::vector<at::Tensor> constants;  // owning: their storages hold the blob
  std::vector<at::Tensor> aliases;    // what the container was given (see load)
  size_t inputs = 0, outputs = 0;
  std::string in_spec, out_spec;
  std::string where;
};

namespace {

// Whether the file open as `fd` holds the record `r` describes: every stored
// byte equal (the cut ranges are never read: the weights are bound instead).
bool holds_record(int fd, const Record& r, std::string_view stored) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != r.size) return false;
  if (r.size == 0) return true;
  MappedRegion file = MappedRegion::map_fd(fd, r.size, "store file");
  bool same = true;
  walk_record(r, [&](uint64_t off, uint64_t from, uint64_t len) {
    same = same && std::memcmp(file.data() + off, stored.data() + from, len) == 0;
  }, [](const Cut&) {});
  return same;
}

bool same_file(int dir_fd, const std::string& name, int fd) {
  struct stat mine {}, named {};
  return ::fstat(fd, &mine) == 0 && ::fstatat(dir_fd, name.c_str(), &named, AT_SYMLINK_NOFOLLOW) == 0 &&
         mine.st_dev == named.st_dev && mine.st_ino == named.st_ino;
}

// `name` in the folder open as `dir_fd`, holding record `r`'s bytes: an
// existing file is reused when every byte zcwrap would write matches;
// otherwise it is written afresh (AtomicFile) with the weights' ranges left
// as holes, so the file takes no room for them. Returns it open and
// flock(LOCK_SH)ed.
UniqueFd place_file(int dir_fd, const std::string& dir_path, const std::string& name, const Record& r,
                    std::string_view stored) {
  const std::string path = dir_path + "/" + name;
  for (int round = 0; round < 8; ++round) {
    UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    const bool absent = !fd.valid() && errno == ENOENT;
    struct stat st {};
    if (fd.valid() && ::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid()) {
      lock_shared(fd.get(), path);
      if (!same_file(dir_fd, name, fd.get())) continue;
      if (holds_record(fd.get(), r, stored)) return fd;
    }
    AtomicFile file(dir_fd, dir_path, name, 0644);
    walk_record(r, [&](uint64_t, uint64_t from, uint64_t len) { file.write(stored.data() + from, len); },
                [&](const Cut& c) { file.write_hole(c.length); });
    // Where the name was free, another worker may have placed the same file
    // meanwhile, and may be loading it: that one is used (next round), not
    // renamed over.
    if (absent) {
      if (!file.commit_unless_present()) continue;
    } else {
      file.commit();
    }
    return file.take_fd();
  }
  throw Error(ErrorCode::kWrite, path + ": removed or replaced by another process 8 times in a row");
}

// The store folder, checked, for a compiled model's files.
StoreFolder code_folder() {
  StoreFolder folder = open_store(store_folder(), /*create=*/true);
  struct statvfs fs {};
  if (::fstatvfs(folder.fd.get(), &fs) == 0 && (fs.f_flag & ST_NOEXEC) != 0) {
    throw Error(ErrorCode::kWrite, folder.path + ": the store is on a file system mounted noexec, where compiled "
                                                 "models cannot be loaded; set ZCWRAP_STORE to a folder on another "
                                                 "file system");
  }
  return folder;
}

// The .so in the store as <digest>.so, written once per machine.
UniqueFd place_library(const StoreFolder& folder, const Record& r, std::string_view stored, const std::string& digest,
                       std::string* path) {
  *path = folder.path + "/" + digest + ".so";
  return place_file(folder.fd.get(), folder.path, digest + ".so", r, stored);
}

// The kernel files (format::is_aoti_kernel_file) of a GPU package, which its code
// loads by base name from the folder it is given, placed once per machine
// in the store folder <digest>.kernels (the .so's digest). Returns the
// folder open and flock(LOCK_SH)ed, so zcwrap gc leaves it while the model
// lives (its kernels are loaded on first use, not when it is created).
UniqueFd place_kernels(const StoreFolder& folder, SkeletonReader& skeleton, const std::vector<size_t>& kernels,
                       const std::string& digest, std::string* path) {
  const std::string name = digest + ".kernels";
  *path = folder.path + "/" + name;
  for (int round = 0; round < 8; ++round) {
    if (::mkdirat(folder.fd.get(), name.c_str(), 0700) != 0 && errno != EEXIST) {
      throw Error(ErrorCode::kWrite, *path + ": cannot create the folder: " + errno_text(errno));
    }
    UniqueFd dir(::openat(folder.fd.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!dir.valid()) {
      if (errno == ENOENT) continue;  // removed by zcwrap gc meanwhile
      throw Error(ErrorCode::kWrite, *path + ": not a folder zcwrap can use (" + errno_text(errno) + "); remove it");
    }
    struct stat st {};
    if (::fstat(dir.get(), &st) != 0 || st.st_uid != ::geteuid() || (st.st_mode & 022) != 0) {
      throw Error(ErrorCode::kWrite, *path + ": not this user's, or others can write it; remove it");
    }
    lock_shared(dir.get(), *path);
    if (!same_file(folder.fd.get(), name, dir.get())) continue;
    for (const size_t i : kernels) {
      const Record& r = skeleton.info().records[i];
      place_file(dir.get(), *path, base_name(r.name), r, skeleton.stored(i));
    }
    return dir;
  }
  throw Error(ErrorCode::kWrite, *path + ": removed by a concurrent zcwrap gc 8 times in a row");
}

}  // namespace

AotiModel::AotiModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AotiModel::~AotiModel() {
  if (impl_) impl_->container.reset();  // before the library closes
}

std::shared_ptr<AotiModel> AotiModel::load(const BlobFile& blob, size_t index, std::vector<at::Tensor> tensors,
                                           const c10::Device& device) {
  SkeletonReader skeleton(blob, index);
  const SkeletonInfo& info = skeleton.info();
  auto impl = std::make_unique<Impl>();
  impl->where = skeleton.where();
  const bool cuda_package = info.device == "cuda" || info.device.rfind("cuda:", 0) == 0;
  if (cuda_package ? !device.is_cuda() : !(info.device == "cpu" && device.is_cpu())) {
    throw Error(ErrorCode::kDevice, impl->where + ": compiled by AOTInductor for " + info.device + ", not " +
                                        device.str() + (cuda_package && !device.is_cuda()
                                                            ? ": unwrap it with device \"cuda\" on a machine with CUDA"
                                                            : ": unwrap it on that device, or compile it for this one"));
  }
  if (info.constants.size() != tensors.size()) {
    throw Error(ErrorCode::kBadBlob, impl->where + ": the skeleton names " + std::to_string(info.constants.size()) +
                                         " constants, the manifest " + std::to_string(tensors.size()));
  }
  const size_t lib = skeleton.find(info.library);
  const std::string_view stored = skeleton.stored(lib);
  const StoreFolder folder = code_folder();
  impl->library_fd = place_library(folder, info.records[lib], stored, info.library_digest, &impl->library_path);
  // By its name, which is its content's: glibc reuses a loaded library of
  // the same name, which is then the same code. The name must still lead to
  // the file whose bytes were compared (only the store's owner can change
  // that; this catches a swap between the check and the load).
  impl->library.open(impl->library_path, impl->library_path);
  {
    struct stat held {}, named {};
    if (::fstat(impl->library_fd.get(), &held) != 0 || ::lstat(impl->library_path.c_str(), &named) != 0 ||
        held.st_dev != named.st_dev || held.st_ino != named.st_ino) {
      throw Error(ErrorCode::kWrite, impl->library_path + ": replaced while it was being loaded; try again");
    }
  }
  const Api& api = impl->library.api();
  std::vector<size_t> kernels;
  for (size_t i = 0; i < info.records.size(); ++i) {
    if (format::is_aoti_kernel_file(info.records[i].name)) kernels.push_back(i);
  }
  if (!kernels.empty()) {
    impl->kernels_fd = place_kernels(folder, skeleton, kernels, info.library_digest, &impl->kernels_path);
  }

  // The container is given tensors that do not own the blob's mapping:
  // torch 2.14's runtime keeps a new handle of each user-managed constant
  // and never frees it (MaybeOwningAtenTensorHandle), which would otherwise
  // keep the blob mapped after the model is gone. `constants` own it, and
  // outlive the container.
  std::vector<AOTInductorConstantMapEntry> entries;
  impl->constants = std::move(tensors);
  impl->aliases.reserve(impl->constants.size());
  for (size_t i = 0; i < impl->constants.size(); ++i) {
    const at::Tensor& t = impl->constants[i];
    c10::Storage view(c10::Storage::use_byte_size_t(), t.storage().nbytes(),
                      c10::DataPtr(const_cast<void*>(t.storage().data()), t.device()), nullptr, false);
    impl->aliases.push_back(at::empty({0}, t.options()).set_(view, t.storage_offset(), t.sizes(), t.strides()));
    entries.push_back({info.constants[i].c_str(), torch::aot_inductor::tensor_pointer_to_tensor_handle(&impl->aliases.back())});
  }
  impl->container = std::make_unique<Container>(impl->library);
  const std::string device_str = device.is_cpu() ? "cpu" : device.str();
  AOTIRuntimeError created = AOTI_RUNTIME_SUCCESS;
  {
    const QuietConstantFolding quiet;
    created = api.create_external(impl->container->out(), 1, device_str.c_str(),
                                  kernels.empty() ? nullptr : impl->kernels_path.c_str(), entries.data(),
                                  entries.size());
  }
  impl->library.check(created, impl->where, "creating the model over the blob's weights");
  impl->library.check(api.num_inputs(impl->container->get(), &impl->inputs), impl->where, "counting inputs");
  impl->library.check(api.num_outputs(impl->container->get(), &impl->outputs), impl->where, "counting outputs");
  const char* in_spec = nullptr;
  const char* out_spec = nullptr;
  impl->library.check(api.call_spec(impl->container->get(), &in_spec, &out_spec), impl->where, "reading its call spec");
  impl->in_spec = in_spec != nullptr ? in_spec : "";
  impl->out_spec = out_spec != nullptr ? out_spec : "";
  return std::shared_ptr<AotiModel>(new AotiModel(std::move(impl)));
}

std::vector<at::Tensor> AotiModel::run(const std::vector<at::Tensor>& inputs) const {
  if (inputs.size() != impl_->inputs) {
    throw Error(ErrorCode::kBadModel, impl_->where + ": takes " + std::to_string(impl_->inputs) + " input tensor" +
                                          (impl_->inputs == 1 ? "" : "s") + ", got " + std::to_string(inputs.size()));
  }
  std::vector<at::Tensor> copy = inputs;  // the handles are stolen by the model; these tensors are not
  std::vector<AtenTensorHandle> in = torch::aot_inductor::unsafe_alloc_new_handles_from_tensors(copy);
  std::vector<AtenTensorHandle> out(impl_->outputs, nullptr);
  impl_->library.check(impl_->library.api().run(impl_->container->get(), in.data(), in.size(), out.data(),
                                                out.size(), nullptr, nullptr),
                       impl_->where, "running the model");
  return torch::aot_inductor::alloc_tensors_by_stealing_from_handles(out.data(), out.size());
}

const std::string& AotiModel::library_path() const { return impl_->library_path; }
const std::vector<at::Tensor>& AotiModel::constants() const { return impl_->constants; }
size_t AotiModel::input_count() const { return impl_->inputs; }
size_t AotiModel::output_count() const { return impl_->outputs; }
const std::string& AotiModel::in_spec() const { return impl_->in_spec; }
const std::string& AotiModel::out_spec() const { return impl_->out_spec; }

namespace {

void flatten(const c10::IValue& v, const std::string& where, std::vector<at::Tensor>* out) {
  if (v.isTensor()) {
    out->push_back(v.toTensor());
  } else if (v.isTuple()) {
    for (const c10::IValue& e : v.toTupleRef().elements()) flatten(e, where, out);
  } else if (v.isList()) {
    for (const c10::IValue& e : v.toListRef()) flatten(e, where, out);
  } else {
    throw Error(ErrorCode::kBadModel, where + ": takes tensors (or tuples and lists of them), not " + v.tagKind());
  }
}

}  // namespace

c10::IValue run_aoti(const AotiModel& model, const std::string& name, std::vector<c10::IValue> inputs) {
  std::vector<at::Tensor> flat;
  for (const c10::IValue& v : inputs) flatten(v, "model '" + name + "'", &flat);
  std::vector<at::Tensor> out = model.run(flat);
  if (out.size() == 1) return out.front();
  return c10::ivalue::Tuple::create(std::vector<c10::IValue>(out.begin(), out.end()));
}

void write_aoti_package(const BlobFile& blob, size_t index, const std::string& path) {
  SkeletonReader skeleton(blob, index);
  const SkeletonInfo& info = skeleton.info();
  const format::ModelEntry& model = blob.manifest().models[index];
  AtomicFile file(path);
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t n) {
    file.write(data, n);
    return n;
  });
  for (size_t i = 0; i < info.records.size(); ++i) {
    const Record& r = info.records[i];
    // PyTorchStreamWriter writes these itself.
    if (r.name == ".data/serialization_id") continue;
    const std::string_view stored = skeleton.stored(i);
    std::string bytes;
    bytes.reserve(r.size);
    walk_record(r, [&](uint64_t, uint64_t from, uint64_t len) { bytes.append(stored.data() + from, len); },
                [&](const Cut& c) {
                  if (c.tensor >= model.tensors.size()) {
                    throw Error(ErrorCode::kBadBlob, skeleton.where() + ": a cut names tensor " +
                                                         std::to_string(c.tensor) + " of " +
                                                         std::to_string(model.tensors.size()));
                  }
                  const uint64_t s = model.tensors[c.tensor].storage;
                  if (blob.manifest().storages[s].nbytes != c.length) {
                    throw Error(ErrorCode::kBadBlob, skeleton.where() + ": storage " + std::to_string(s) + " holds " +
                                                         std::to_string(blob.manifest().storages[s].nbytes) +
                                                         " bytes, the package's range " + std::to_string(c.length));
                  }
                  bytes.append(reinterpret_cast<const char*>(blob.storage_data(s)), c.length);
                });
    try {
      writer.writeRecord(r.name, bytes.data(), bytes.size());
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(ErrorCode::kWrite, path + ": cannot write record '" + r.name + "': " + first_line(e));
    }
  }
  try {
    writer.writeEndOfFile();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kWrite, path + ": " + first_line(e));
  }
  file.commit();
}

}  // namespace zcwrap::detail
