// Hard TorchScript models: frozen (weights as graph constants), quantized
// (weights in packed objects), extra files, several methods, a training flag;
// and unpack, the lossless way back to a .pt file.
#include "torch_support.hpp"  // first: see there

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <optional>

#include <caffe2/serialize/inline_container.h>
#include <nlohmann/json.hpp>

#include "mapped_load.hpp"
#include "torch_util.hpp"
#include "messages.hpp"

using nlohmann::json;
using zcwrap::Layout;
using zcwrap::ModelWrapper;
namespace test = zcwrap::test;

namespace {

std::vector<json> hard_fixtures() {
  std::vector<json> out;
  for (const json& fx : test::fixtures_index()["models"]) {
    if (fx.value("group", "") == "hard") out.push_back(fx);
  }
  return out;
}

// Bytes of tensor data a TorchScript archive holds: its storage records
// (data/) and graph constants (constants/).
uint64_t archive_tensor_bytes(const std::string& path) {
  caffe2::serialize::PyTorchStreamReader reader(path);
  uint64_t total = 0;
  for (const std::string& record : reader.getAllRecords()) {
    if (record.rfind("data/", 0) == 0 || record.rfind("constants/", 0) == 0) {
      total += std::get<1>(reader.getRecord(record));
    }
  }
  return total;
}

torch::jit::ExtraFilesMap read_extra_files(const std::string& path, const json& names) {
  torch::jit::ExtraFilesMap files;
  for (const json& n : names) files[n.get<std::string>()] = "";
  torch::jit::load(path, c10::nullopt, files);
  return files;
}

// Parameters and buffers by name, with values, dtypes and requires_grad.
void check_same_tensors(const torch::jit::Module& a, const torch::jit::Module& b) {
  auto collect = [](const torch::jit::Module& m) {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& p : m.named_parameters()) out.emplace_back("param " + p.name, p.value);
    for (const auto& p : m.named_buffers()) out.emplace_back("buffer " + p.name, p.value);
    return out;
  };
  const auto ta = collect(a), tb = collect(b);
  REQUIRE(ta.size() == tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    CAPTURE(ta[i].first);
    CHECK(ta[i].first == tb[i].first);
    CHECK(ta[i].second.requires_grad() == tb[i].second.requires_grad());
    std::string why;
    CHECK_MESSAGE(test::bit_equal(ta[i].second.detach(), tb[i].second.detach(), &why), why);
  }
}

// One hard fixture, packed on its own into a folder of its own.
struct PackedFixture {
  explicit PackedFixture(const json& fx)
      : name(fx["name"].get<std::string>()),
        model(test::fixture(fx["file"])),
        input(test::fixture(fx["input"])),
        wrapper(ModelWrapper::pack_files({{"m", model}}, Layout::kStandalone, dir / "m.zcb")) {}
  std::string blob() const { return dir / "m.zcb"; }

  std::string name;
  std::string model;
  std::string input;
  test::TempDir dir;
  ModelWrapper wrapper;
};

}  // namespace

TEST_CASE("hard models unwrap bit-equal to torch::jit::load, sharing what LibTorch allows") {
  for (const json& fx : hard_fixtures()) {
    const PackedFixture f(fx);
    CAPTURE(f.name);
    const std::string& model_path = f.model;
    const std::string& input = f.input;
    zcwrap::Unwrapped u = f.wrapper.unwrap();
    // Eval even when saved in training mode (frozen modules have no flag).
    if (u.module().hasattr("training")) CHECK_FALSE(u.module().is_training());

    std::string why;
    CHECK_MESSAGE(test::bit_equal(test::reference_output(model_path, fx["method"], input),
                                  test::call(u.module(), fx["method"], test::load_inputs(input)), &why),
                  why);

    const json info = zcwrap::describe(f.blob());
    const json& model = info["models"][0];
    const uint64_t shared = info["storages"]["bytes"];
    const uint64_t unshared = model["unshared_bytes"];
    MESSAGE(f.name << ": " << shared << " bytes shared, " << unshared << " left in the skeleton");
    // Every byte of tensor data in the original archive is accounted for:
    // moved to the data section, reported as left in the skeleton, or (the
    // per-channel scales and zero points of quantized tensors, which the
    // archive stores as tensors) written into the manifest.
    uint64_t qparams = 0;
    for (const auto& b : torch::jit::load(model_path).named_buffers()) {
      if (b.value.is_quantized() && b.value.qscheme() == at::kPerChannelAffine) {
        qparams += b.value.q_per_channel_scales().nbytes() + b.value.q_per_channel_zero_points().nbytes();
      }
    }
    CHECK(shared + unshared + qparams == archive_tensor_bytes(model_path));
    if (fx["sharing"] == "all") {
      CHECK(unshared == 0);
      CHECK(model["shared_fraction"] == 1.0);
      for (const auto& p : u.module().named_parameters()) CHECK(test::points_into(p.value, u));
    } else {
      // Quantized weights live in packed-parameter objects that LibTorch
      // re-packs at load: they stay in the skeleton, and inspect says so.
      CHECK(unshared > 0);
      CHECK(model["shared_fraction"].get<double>() < fx["shared_below"].get<double>());
    }
    if (fx["kind"].get<std::string>().rfind("frozen", 0) == 0) {
      size_t constants = 0;
      for (const json& t : model["tensors"]) constants += t["kind"] == "constant";
      CHECK(constants > 0);
      CHECK(constants == model["tensor_count"].get<size_t>());
    }
  }
}

TEST_CASE("unpack gives back an equal TorchScript file: outputs, tensors, methods, extra files, training flag") {
  for (const json& fx : hard_fixtures()) {
    const PackedFixture f(fx);
    CAPTURE(f.name);
    const std::string& model_path = f.model;
    const std::string& input = f.input;
    const std::string back_path = f.dir / "back.pt";
    f.wrapper.unpack(back_path);

    torch::jit::Module original = torch::jit::load(model_path);
    torch::jit::Module back = torch::jit::load(back_path);
    CHECK(back.is_training() == original.is_training());
    if (fx.contains("training")) CHECK(back.is_training() == fx["training"].get<bool>());
    check_same_tensors(original, back);
    std::vector<std::string> methods_a, methods_b;
    for (const auto& m : original.get_methods()) methods_a.push_back(m.name());
    for (const auto& m : back.get_methods()) methods_b.push_back(m.name());
    CHECK(methods_a == methods_b);

    original.eval();
    back.eval();
    std::string why;
    CHECK_MESSAGE(test::bit_equal(test::call(original, fx["method"], test::load_inputs(input)),
                                  test::call(back, fx["method"], test::load_inputs(input)), &why),
                  why);
    if (fx.contains("extra_file_names")) {
      CHECK(read_extra_files(back_path, fx["extra_file_names"]) ==
            read_extra_files(model_path, fx["extra_file_names"]));
      CHECK(read_extra_files(back_path, fx["extra_file_names"])["config.json"].find("labels") !=
            std::string::npos);
    }
    CHECK(archive_tensor_bytes(back_path) == archive_tensor_bytes(model_path));
  }
}

TEST_CASE("unpacked files open in Python's torch.jit.load with outputs equal to the original") {
  test::TempDir dir;
  for (const char* name : {"resnet18_frozen", "three_methods", "lstm_dynamic_quant"}) {
    CAPTURE(name);
    const std::string out = dir / (std::string(name) + ".pt");
    auto r = test::run_process({test::zcwrap_bin(), "pack", "-q", test::fixture(std::string(name) + ".pt"), "-o",
                                dir / "b.zcb"});
    REQUIRE(r.status == 0);
    r = test::run_process({test::zcwrap_bin(), "unpack", dir / "b.actor.json", "-o", out});
    REQUIRE_MESSAGE(r.status == 0, r.err);
    auto py = test::run_process(
        {test::python(), "-c",
         "import sys, torch\n"
         "a = torch.jit.load(sys.argv[1]).eval(); b = torch.jit.load(sys.argv[2]).eval()\n"
         "x = torch.load(sys.argv[3])\n"
         "with torch.no_grad(): ya, yb = a(x), b(x)\n"
         "print(ya.numpy().tobytes() == yb.numpy().tobytes())\n",
         test::fixture(std::string(name) + ".pt"), out, test::fixture(std::string(name) + "_in.pt")});
    CHECK_MESSAGE(py.status == 0, py.err);
    CHECK(py.out == "True\n");
  }
}

TEST_CASE("unpack of a pipeline needs --model; unknown names are refused") {
  test::TempDir dir;
  ModelWrapper w = ModelWrapper::pack_files(
      {{"a", test::fixture("pipeline_a.pt")}, {"b", test::fixture("pipeline_b.pt")}}, Layout::kPipeline, dir / "p.zcb");
  CHECK_THROWS_AS(w.unpack(dir / "x.pt"), zcwrap::Error);
  CHECK_THROWS_AS(w.unpack(dir / "x.pt", "c"), zcwrap::Error);
  auto r = test::run_process({test::zcwrap_bin(), "unpack", dir / "p.zcb", "-o", dir / "x.pt"});
  CHECK(r.status == 2);
  CHECK(r.err.find("one of: a, b") != std::string::npos);
  CHECK_FALSE(test::file_exists(dir / "x.pt"));
  w.unpack(dir / "b.pt", "b");
  std::string why;
  torch::jit::Module back = torch::jit::load(dir / "b.pt");
  back.eval();
  CHECK(test::bit_equal(test::reference_output(test::fixture("pipeline_b.pt"), "forward", test::fixture("pipeline_b_in.pt")),
                        test::call(back, "forward", test::load_inputs(test::fixture("pipeline_b_in.pt"))), &why));
}

TEST_CASE("pack's mapped load gives the same outputs as torch::jit::load, or declines the archive") {
  for (const json& fx : test::fixtures_index()["models"]) {
    const std::string name = fx["name"];
    CAPTURE(name);
    const std::string model_path = test::fixture(fx["file"]);
    torch::jit::ExtraFilesMap extra;
    std::optional<torch::jit::Module> mapped =
        zcwrap::detail::load_mapped(zcwrap::detail::open_model_source(model_path), extra);
    if (fx["kind"].get<std::string>().rfind("quantized", 0) == 0) {
      CHECK_FALSE(mapped.has_value());  // loading them reads tensor values
      continue;
    }
    REQUIRE(mapped.has_value());
    mapped->eval();
    const std::string input = test::fixture(fx["input"]);
    std::string why;
    CHECK_MESSAGE(test::bit_equal(test::reference_output(model_path, fx["method"], input),
                                  test::call(*mapped, fx["method"], test::load_inputs(input)), &why),
                  why);
  }
}

TEST_CASE("LibTorch's notes to its own developers are dropped from messages") {
  using zcwrap::detail::without_torch_notes;
  CHECK(without_torch_notes("x.pt: bad value 7 (Could this error message be improved? If so, please report an "
                            "enhancement request to PyTorch.)") == "x.pt: bad value 7");
  CHECK(without_torch_notes("x.pt: bad value 7") == "x.pt: bad value 7");
  // LibTorch 2.x's advice after a zip reader's error.
  CHECK(without_torch_notes("PytorchStreamReader failed reading zip archive: failed finding central directory. This "
                            "is an internal miniz error. If you are seeing this error, there is a high likelihood "
                            "that your checkpoint file is corrupted.") ==
        "PytorchStreamReader failed reading zip archive: failed finding central directory");
}

namespace {

// Bytes placed so that the last one ends a page and the next page is
// PROT_NONE: a read past them faults, so a bounds bug fails the test.
class GuardedBytes {
 public:
  explicit GuardedBytes(const std::vector<uint8_t>& bytes) {
    page_ = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    base_ = static_cast<uint8_t*>(::mmap(nullptr, 2 * page_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    REQUIRE(base_ != MAP_FAILED);
    REQUIRE(::mprotect(base_ + page_, page_, PROT_NONE) == 0);
    data_ = base_ + page_ - bytes.size();
    std::memcpy(data_, bytes.data(), bytes.size());
  }
  ~GuardedBytes() { ::munmap(base_, 2 * page_); }
  const uint8_t* data() const { return data_; }

 private:
  size_t page_ = 0;
  uint8_t* base_ = nullptr;
  uint8_t* data_ = nullptr;
};

void put32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace

TEST_CASE("the zip reader stays inside files shorter than its fixed records") {
  // A zip64 locator in a 50-byte file pointing at a zip64 end record at 0:
  // the record (56 bytes) cannot fit, whatever its signature says.
  std::vector<uint8_t> zip64(50, 0);
  put32(zip64, 0, 0x06064b50);
  put32(zip64, 50 - 22, 0x06054b50);
  zip64[50 - 22 + 10] = 0xff, zip64[50 - 22 + 11] = 0xff;  // entries: 0xffff, so look for zip64
  put32(zip64, 50 - 22 - 20, 0x07064b50);                  // locator; its offset field (eocd64) is 0
  CHECK(zcwrap::detail::zip_central_directory(GuardedBytes(zip64).data(), zip64.size()).empty());

  // A 30-byte file whose end record lists one central entry at 0: the entry
  // (46 bytes) cannot fit either.
  std::vector<uint8_t> short_cd(30, 0);
  put32(short_cd, 0, 0x02014b50);
  put32(short_cd, 30 - 22, 0x06054b50);
  short_cd[30 - 22 + 10] = 1;  // one entry, central directory at offset 0
  CHECK(zcwrap::detail::zip_central_directory(GuardedBytes(short_cd).data(), short_cd.size()).empty());

  for (size_t n = 0; n < 80; ++n) {  // every short length, end record last
    std::vector<uint8_t> bytes(n, 0xff);
    if (n >= 22) put32(bytes, n - 22, 0x06054b50);
    CHECK(zcwrap::detail::zip_central_directory(GuardedBytes(bytes).data(), n).size() <= 1);
  }
}
