// AOTInductor packages (skeleton kind "aot_inductor"): pack, zero-copy
// unwrap, run, unpack, bad input, memory. The fixtures (a CNN and a
// transformer block, each with its weights in the .so and on disk) are
// compiled once per torch by tests/fixtures/make_aoti_fixtures.py; a lane
// whose torch has no AOTInductor (Debian's 1.13) skips these cases, saying
// why.
#include "torch_support.hpp"  // first: see there

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <thread>

#include "aoti.hpp"
#include "blob_file.hpp"
#include "cli_support.hpp"
#include "mapped_load.hpp"
#include "unwrap.hpp"
#include "wrapper_access.hpp"

namespace test = zcwrap::test;
namespace zd = zcwrap::detail;

namespace {

std::string aoti_dir() {
  const char* dir = std::getenv("ZCWRAP_AOTI_FIXTURES");
  if (dir == nullptr) throw std::runtime_error("ZCWRAP_AOTI_FIXTURES is not set (run the tests with meson test)");
  return dir;
}

std::string aoti_fixture(const std::string& file) { return aoti_dir() + "/" + file; }

const nlohmann::json& aoti_index() {
  static const nlohmann::json index = nlohmann::json::parse(test::read_bytes(aoti_fixture("fixtures.json")));
  return index;
}

// Empty when the lane has the fixtures; else why not.
std::string skip_reason() {
  if (!zd::aoti_supported()) {
    return "this zcwrap is built without AOTInductor (" + aoti_index().value("skip", std::string("no reason")) + ")";
  }
  return aoti_index().value("skip", std::string());
}

bool skipped() { return !skip_reason().empty(); }

std::vector<at::Tensor> tensors_of(const c10::IValue& v) {
  std::vector<at::Tensor> out;
  if (v.isTensor()) return {v.toTensor()};
  for (const c10::IValue& e : v.toTupleRef().elements()) out.push_back(e.toTensor());
  return out;
}

c10::IValue as_tuple(const std::vector<at::Tensor>& ts) {
  std::vector<c10::IValue> values(ts.begin(), ts.end());
  return c10::ivalue::Tuple::create(std::move(values));
}

// A blob's standalone model, unwrapped with the public API, and the
// AOTInductor model inside it.
struct Loaded {
  zcwrap::Unwrapped unwrapped;
  zcwrap::Unwrapped::Model handle;
  const zd::AotiModel& model() const {
    return *std::get<std::shared_ptr<zd::AotiModel>>(zd::WrapperAccess::model(handle).built);
  }
};

Loaded unwrap(const std::string& blob_path) {
  zcwrap::Unwrapped u = zcwrap::ModelWrapper::open(blob_path).unwrap();
  zcwrap::Unwrapped::Model m = u.model();
  return {std::move(u), std::move(m)};
}

std::vector<c10::IValue> values_of(const std::vector<at::Tensor>& ts) { return {ts.begin(), ts.end()}; }

// The outputs as the fixtures' references hold them: always a tuple.
c10::IValue as_reference(const c10::IValue& v) { return v.isTensor() ? as_tuple({v.toTensor()}) : v; }

// Private_Dirty of this process, kB (/proc/self/smaps_rollup): a copy of
// the weights in malloc'ed memory shows there, pages of a shared mapping
// do not.
long private_dirty_kb() {
  std::ifstream in("/proc/self/smaps_rollup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Private_Dirty:", 0) == 0) return std::stol(line.substr(14));
  }
  throw std::runtime_error("no Private_Dirty in /proc/self/smaps_rollup");
}

// EXE --child memory BLOB INPUT: prints the growth of private memory over
// unwrap and the first call. EXE --child loader PT2 INPUT: the same for
// torch's own AOTIModelPackageLoader-equivalent path (the package read into
// the container: AotiModel's pack-time loader is not public, so the
// baseline is the weights a CreateWithDevice container copies; see
// memory_baseline below).
int aoti_child(int argc, char** argv) {
  if (argc < 5) return 2;
  try {
    const std::string mode = argv[2];
    std::vector<at::Tensor> inputs = tensors_of(test::load_value(argv[4]));
    torch::NoGradGuard no_grad;
    // LibTorch's own start-up (allocator, thread pool) before the baseline.
    (void)(inputs[0] + 1).sum().item<float>();
    const long before = private_dirty_kb();
    if (mode == "memory") {
      Loaded l = unwrap(argv[3]);
      const c10::IValue out = l.handle.run(values_of(inputs));
      const long after = private_dirty_kb();
      std::cout << "growth " << (after - before) << " " << out.isTensor() << std::endl;
    } else {
      // The weights copied as torch's loader does (load_constants memcpy's
      // every constant out of the .so): the same package read for packing.
      const zd::AotiPackage package = zd::read_aoti_package(zd::open_model_source(argv[3]), "model");
      std::vector<at::Tensor> copies;
      for (const auto& c : package.constants) copies.push_back(c.tensor.clone());
      const long after = private_dirty_kb();
      std::cout << "growth " << (after - before) << " " << copies.size() << std::endl;
    }
    return 0;
  } catch (const std::exception& e) {
    std::cout << "failed " << e.what() << std::endl;
    return 1;
  }
}

const bool registered = (test::child_main = &aoti_child, true);

}  // namespace

TEST_CASE("AOTInductor: this lane has it, or says why it skips") {
  const std::string reason = skip_reason();
  if (!reason.empty()) {
    MESSAGE("AOTInductor cases skipped: " << reason);
    // The stub refuses packages with one line that says what to use.
    CHECK_FALSE(zd::aoti_supported());
    try {
      zd::read_aoti_package(zd::open_model_source(test::fixture("fixtures.json")), "model");
      FAIL("the stub accepted a package");
    } catch (const zcwrap::Error& e) {
      CHECK(e.code() == zcwrap::ErrorCode::kBadModel);
      CHECK(std::string(e.what()).find("has no AOTInductor") != std::string::npos);
    }
    return;
  }
  CHECK(zd::aoti_supported());
  // A CNN and a transformer block, each with its weights in the .so, on
  // disk, and appended to the .so (force_mmap_weights).
  REQUIRE(aoti_index()["models"].size() == 6);
}

TEST_CASE("AOTInductor: every fixture packs and runs zero-copy, bit-equal to torch's loader" * doctest::skip(skipped())) {
  for (const auto& m : aoti_index()["models"]) {
    const std::string name = m["name"];
    SUBCASE(name.c_str()) {
      test::TempDir dir;
      const std::string blob = dir / "m.zcb";
      zcwrap::ModelWrapper::pack_files({{"m", aoti_fixture(m["file"])}}, zcwrap::Layout::kStandalone, blob);
      const zcwrap::BlobInfo info = zcwrap::describe(blob);
      REQUIRE(info.models.size() == 1);
      CHECK(info.models[0].skeleton.kind == "aot_inductor");
      // Every weight went to the data section: none is left in the skeleton.
      CHECK(info.models[0].unshared_bytes == 0);
      CHECK(info.storage_bytes >= m["state_dict_bytes"].get<uint64_t>() / 2);
      CHECK(info.models[0].skeleton.raw_bytes < 8u << 20);

      Loaded l = unwrap(blob);
      CHECK(l.handle.kind() == "aot_inductor");
      CHECK_FALSE(l.handle.is_torchscript());
      REQUIRE(l.handle.tensors().size() == info.models[0].tensor_count);
      // The container runs on exactly the tensors of the blob's mapping.
      for (const at::Tensor& t : l.handle.tensors()) CHECK(test::points_into(t, l.unwrapped));
      for (size_t i = 0; i < l.handle.tensors().size(); ++i) {
        CHECK(l.model().constants()[i].data_ptr() == l.handle.tensors()[i].data_ptr());
      }
      const std::vector<at::Tensor> inputs = tensors_of(test::load_value(aoti_fixture(m["input"])));
      const c10::IValue want = test::load_value(aoti_fixture(m["reference"]));
      std::string why;
      CHECK_MESSAGE(test::bit_equal(as_reference(l.handle.run(values_of(inputs))), want, &why), name << ": " << why);
      // A second call gives the same (no state left behind).
      CHECK_MESSAGE(test::bit_equal(as_reference(l.handle.run(values_of(inputs))), want, &why), name << ": " << why);
    }
  }
}

// torch._inductor.package.package_aoti puts several compiled models in one
// package; torch's loader takes one of them by name. zcwrap packs each as a
// model of a pipeline, by that name, with its own records only.
TEST_CASE("AOTInductor: a package of several models packs as a pipeline of them" * doctest::skip(skipped())) {
  const nlohmann::json& multi = aoti_index().at("multi");
  test::TempDir dir;
  const std::string blob = dir / "m.zcb";
  test::ProcessResult r = test::run_cli({"pack", aoti_fixture(multi["file"]), "-o", blob, "--quiet"});
  REQUIRE_MESSAGE(r.status == 0, r.err);
  const zcwrap::BlobInfo info = zcwrap::describe(blob);
  CHECK_FALSE(info.standalone);
  REQUIRE(info.models.size() == multi["models"].size());
  uint64_t libraries = 0;
  for (const zcwrap::ModelInfo& m : info.models) libraries += m.compiled.value().library_bytes;
  for (size_t i = 0; i < info.models.size(); ++i) {
    const zcwrap::ModelInfo& m = info.models[i];
    const nlohmann::json& want = multi["models"][i];
    CHECK(m.name == want["name"].get<std::string>());
    CHECK(m.unshared_bytes == 0);
    // Its own .so, not the other's.
    CHECK(m.skeleton.raw_bytes < libraries - m.compiled->library_bytes + (8u << 20));
    const std::string out = dir / (m.name + "_out.pt");
    r = test::run_cli({"run", blob, "--model", m.name, "-i", aoti_fixture(want["input"]), "-o", out});
    REQUIRE_MESSAGE(r.status == 0, r.err);
    std::string why;
    CHECK_MESSAGE(test::bit_equal(as_reference(test::load_value(out)), test::load_value(aoti_fixture(want["reference"])),
                                  &why),
                  m.name << ": " << why);
    // Unpacked, it is a package of that one model, which torch's loader
    // takes by its name.
    const std::string back = dir / (m.name + ".pt2"), again = dir / (m.name + "_again.pt");
    r = test::run_cli({"unpack", blob, "--model", m.name, "-o", back});
    REQUIRE_MESSAGE(r.status == 0, r.err);
    const std::string script =
        "import os, sys\n"
        "sys.setdlopenflags(os.RTLD_GLOBAL | os.RTLD_LAZY)\n"
        "import torch\n"
        "from torch._inductor.package import load_package\n"
        "pkg, name, inp, out = sys.argv[1:5]\n"
        "with torch.no_grad():\n"
        "    r = load_package(pkg, model_name=name)(*torch.load(inp))\n"
        "torch.save(tuple(r) if isinstance(r, (list, tuple)) else (r,), out)\n";
    r = test::run_process({test::python(), "-c", script, back, m.name, aoti_fixture(want["input"]), again});
    REQUIRE_MESSAGE(r.status == 0, r.err);
    CHECK_MESSAGE(test::bit_equal(test::load_value(again), test::load_value(aoti_fixture(want["reference"])), &why),
                  m.name << " unpacked: " << why);
  }
}

TEST_CASE("AOTInductor: the .so is placed once, by content, without its weights" * doctest::skip(skipped())) {
  test::TempDir dir;
  const std::string blob = dir / "m.zcb";
  zcwrap::ModelWrapper::pack_files({{"m", aoti_fixture("cnn_so.pt2")}}, zcwrap::Layout::kStandalone, blob);
  Loaded a = unwrap(blob);
  Loaded b = unwrap(blob);
  const std::string so = a.model().library_path();
  CHECK(so == b.model().library_path());
  CHECK(so.rfind(zcwrap::store_folder() + "/", 0) == 0);
  struct stat st {};
  REQUIRE(::stat(so.c_str(), &st) == 0);
  const zcwrap::BlobInfo info = zcwrap::describe(blob);
  const uint64_t weights = info.storage_bytes;
  // What inspect says of the compiled code: the package's device and .so.
  REQUIRE(info.models.at(0).compiled.has_value());
  CHECK(info.models.at(0).compiled->device == "cpu");
  CHECK(info.models.at(0).compiled->compute_capability.empty());
  CHECK(info.models.at(0).compiled->kernel_files == 0);
  CHECK(info.models.at(0).compiled->library_bytes == static_cast<uint64_t>(st.st_size));
  // The skeleton is stored as it is: every unwrap compares the .so with it
  // in place in the blob's mapping.
  CHECK(info.models.at(0).skeleton.compression == "none");
  // The weights' range of the .so is a hole: the file is as long as the
  // package's .so, but holds only its code.
  MESSAGE(so << ": " << st.st_size << " bytes long, " << st.st_blocks * 512 << " bytes on disk; weights " << weights);
  CHECK(static_cast<uint64_t>(st.st_size) > weights);
  CHECK(static_cast<uint64_t>(st.st_blocks) * 512 < static_cast<uint64_t>(st.st_size) - weights / 2);
}

TEST_CASE("AOTInductor: workers placing the .so at once all load it" * doctest::skip(skipped())) {
  // Workers that start together where the .so is not in the store yet each
  // write it; one is renamed into place, the others use it. Renaming one
  // over another that a worker was loading failed that worker with
  // "replaced while it was being loaded" (about one start in 60 with four
  // processes). Threads here, released together, round after round.
  test::TempDir dir;
  const std::string blob = dir / "m.zcb";
  zcwrap::ModelWrapper::pack_files({{"m", aoti_fixture("cnn_so.pt2")}}, zcwrap::Layout::kStandalone, blob);
  const std::vector<at::Tensor> inputs = tensors_of(test::load_value(aoti_fixture("cnn_in.pt")));
  constexpr int kRounds = 12, kWorkers = 6;
  std::vector<std::string> failures;
  for (int round = 0; round < kRounds; ++round) {
    const std::string store = dir / ("store" + std::to_string(round));
    ::setenv("ZCWRAP_STORE", store.c_str(), 1);
    std::atomic<int> ready{0};
    std::mutex mutex;
    std::vector<std::thread> workers;
    for (int w = 0; w < kWorkers; ++w) {
      workers.emplace_back([&] {
        ready.fetch_add(1);
        while (ready.load() < kWorkers) std::this_thread::yield();
        try {
          torch::NoGradGuard no_grad;
          Loaded l = unwrap(blob);
          (void)l.handle.run(values_of(inputs));
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(mutex);
          failures.push_back("round " + std::to_string(round) + ": " + e.what());
        }
      });
    }
    for (std::thread& t : workers) t.join();
    int placed = 0;
    for (const auto& entry : std::filesystem::directory_iterator(store)) {
      placed += entry.path().extension() == ".so" ? 1 : 0;
    }
    CHECK(placed == 1);
  }
  ::unsetenv("ZCWRAP_STORE");
  for (const std::string& f : failures) MESSAGE(f);
  CHECK(failures.empty());
}

TEST_CASE("AOTInductor: unpack gives back a package torch's loader runs bit-equal" * doctest::skip(skipped())) {
  for (const auto& m : aoti_index()["models"]) {
    const std::string name = m["name"];
    SUBCASE(name.c_str()) {
      test::TempDir dir;
      const std::string blob = dir / "m.zcb";
      const std::string back = dir / "back.pt2";
      const std::string out = dir / "out.pt";
      zcwrap::ModelWrapper::pack_files({{"m", aoti_fixture(m["file"])}}, zcwrap::Layout::kStandalone, blob);
      zcwrap::ModelWrapper::open(blob).unpack(back);
      // torch's loader, in a fresh Python, on the unpacked package; then
      // every record compared with the original's.
      const std::string script =
          "import os, sys, zipfile\n"
          "sys.setdlopenflags(os.RTLD_GLOBAL | os.RTLD_LAZY)\n"
          "import torch, torch._inductor\n"
          "pkg, original, inp, out, disk = sys.argv[1:6]\n"
          "if disk == '1':\n"
          "    from torch.export.pt2_archive._package import load_pt2\n"
          "    model = load_pt2(pkg, load_weights_from_disk=True).aoti_runners['model']\n"
          "else:\n"
          "    model = torch._inductor.aoti_load_package(pkg)\n"
          "with torch.no_grad():\n"
          "    r = model(*torch.load(inp))\n"
          "torch.save(tuple(r) if isinstance(r, (list, tuple)) else (r,), out)\n"
          "def records(p):\n"
          "    with zipfile.ZipFile(p) as z:\n"
          "        return {n.split('/', 1)[1]: z.read(n) for n in z.namelist()}\n"
          "a, b = records(pkg), records(original)\n"
          "for n in sorted(set(a) | set(b)):\n"
          "    if n != '.data/serialization_id' and a.get(n) != b.get(n):\n"
          "        print('differs:', n)\n";
      const test::ProcessResult r =
          test::run_process({test::python(), "-c", script, back, aoti_fixture(m["file"]), aoti_fixture(m["input"]),
                             out, m["weights_in_so"].get<bool>() ? "0" : "1"});
      REQUIRE_MESSAGE(r.status == 0, r.err);
      CHECK_MESSAGE(r.out.empty(), r.out);
      std::string why;
      CHECK_MESSAGE(test::bit_equal(test::load_value(out), test::load_value(aoti_fixture(m["reference"])), &why),
                    name << ": " << why);
    }
  }
}

TEST_CASE("AOTInductor: unwrap and the first call add under a quarter of the weights in private memory" *
          doctest::skip(skipped())) {
  test::TempDir dir;
  const std::string blob = dir / "m.zcb";
  zcwrap::ModelWrapper::pack_files({{"m", aoti_fixture("cnn_so.pt2")}}, zcwrap::Layout::kStandalone, blob);
  const long weights_kb = static_cast<long>(zcwrap::describe(blob).storage_bytes / 1024);
  auto growth = [&](const std::vector<std::string>& args) {
    test::Child c = test::spawn_child(args);
    const std::string line = test::read_line(c.out);
    ::close(c.in);
    ::close(c.out);
    test::wait_child(c.pid);
    REQUIRE_MESSAGE(line.rfind("growth ", 0) == 0, line);
    return std::stol(line.substr(7));
  };
  const std::string input = aoti_fixture("cnn_in.pt");
  const long zcwrap_kb = growth({"/proc/self/exe", "--child", "memory", blob, input});
  // The measure sees a copy: the weights copied out of the package grow it
  // by about their size.
  const long copy_kb = growth({"/proc/self/exe", "--child", "loader", aoti_fixture("cnn_so.pt2"), input});
  MESSAGE("weights " << weights_kb << " kB; private memory growth: zcwrap unwrap + first call " << zcwrap_kb
                     << " kB, reading the package with a copy of the weights " << copy_kb << " kB");
  CHECK(zcwrap_kb < weights_kb / 4);
  CHECK(copy_kb > weights_kb * 3 / 4);
}

// Pack loads the package's .so (and a GPU package's kernel files) from a
// temporary folder of its own under $TMPDIR: gone afterwards, whether the
// pack succeeded or failed.
namespace {
test::ProcessResult pack_with_tmpdir(const std::string& package, const std::string& blob, const std::string& tmpdir) {
  const char* before = std::getenv("TMPDIR");
  const std::string saved = before != nullptr ? before : "";
  ::setenv("TMPDIR", tmpdir.c_str(), 1);
  test::ProcessResult r = test::run_cli({"pack", package, "-o", blob});
  if (before != nullptr) {
    ::setenv("TMPDIR", saved.c_str(), 1);
  } else {
    ::unsetenv("TMPDIR");
  }
  return r;
}
}  // namespace

TEST_CASE("AOTInductor: pack refuses bad packages with one line, and writes nothing" * doctest::skip(skipped())) {
  for (const auto& bad : aoti_index()["bad"]) {
    const std::string file = bad["file"];
    SUBCASE(file.c_str()) {
      test::TempDir dir, tmp;
      const std::string blob = dir / "m.zcb";
      const test::ProcessResult r = pack_with_tmpdir(aoti_fixture(file), blob, tmp.path());
      MESSAGE(file << " (" << bad["what"].get<std::string>() << "): " << r.err);
      test::check_failure(r, bad["status"].get<int>(), file);
      CHECK(test::list_dir(dir.path()).empty());
      CHECK(test::list_dir(tmp.path()).empty());
    }
  }
  SUBCASE("and a good package leaves no temporary folder either") {
    test::TempDir dir, tmp;
    const test::ProcessResult r = pack_with_tmpdir(aoti_fixture("cnn_so.pt2"), dir / "m.zcb", tmp.path());
    CHECK_MESSAGE(r.status == 0, r.err);
    CHECK(test::list_dir(tmp.path()).empty());
  }
}

TEST_CASE("AOTInductor: gc removes a placed .so only once no process holds it" * doctest::skip(skipped())) {
  test::TempDir dir;
  const std::string store = dir / "store";
  ::setenv("ZCWRAP_STORE", store.c_str(), 1);
  const std::string blob = dir / "m.zcb";
  zcwrap::ModelWrapper::pack_files({{"m", aoti_fixture("transformer_so.pt2")}}, zcwrap::Layout::kStandalone, blob);
  std::string so;
  {
    Loaded l = unwrap(blob);
    so = l.model().library_path();
    CHECK(test::file_exists(so));
    for (const zcwrap::StoreFile& f : zcwrap::gc({"", true})) CHECK(f.path != so);
  }
  bool listed = false;
  for (const zcwrap::StoreFile& f : zcwrap::gc({"", false})) listed = listed || f.path == so;
  CHECK(listed);
  CHECK_FALSE(test::file_exists(so));
  ::unsetenv("ZCWRAP_STORE");
}

TEST_CASE("AOTInductor: pack, inspect, verify, run and unpack through the CLI" * doctest::skip(skipped())) {
  for (const auto& m : aoti_index()["models"]) {
    const std::string name = m["name"];
    SUBCASE(name.c_str()) {
      test::TempDir dir;
      const std::string blob = dir / "m.zcb", out = dir / "out.pt", back = dir / "back.pt2";
      test::ProcessResult r = test::run_cli({"pack", aoti_fixture(m["file"]), "-o", blob, "--json"});
      REQUIRE_MESSAGE(r.status == 0, r.err);
      CHECK(nlohmann::json::parse(r.out)["unshared_bytes"] == 0);
      r = test::run_cli({"inspect", "--json", blob});
      REQUIRE_MESSAGE(r.status == 0, r.err);
      const auto info = nlohmann::json::parse(r.out);
      CHECK(info["models"][0]["skeleton"]["kind"] == "aot_inductor");
      CHECK(info["models"][0]["imports"].empty());
      CHECK(info["models"][0]["compiled"]["device"] == "cpu");
      r = test::run_cli({"inspect", "--brief", blob});
      REQUIRE_MESSAGE(r.status == 0, r.err);
      CHECK_MESSAGE(r.out.find("compiled by AOTInductor for cpu: its .so ") != std::string::npos, r.out);
      r = test::run_cli({"verify", blob});
      CHECK_MESSAGE(r.status == 0, r.err);
      r = test::run_cli({"run", blob, "--input", aoti_fixture(m["input"]), "--output", out});
      REQUIRE_MESSAGE(r.status == 0, r.err);
      std::string why;
      CHECK_MESSAGE(test::bit_equal(as_reference(test::load_value(out)), test::load_value(aoti_fixture(m["reference"])),
                                    &why),
                    name << ": " << why);
      r = test::run_cli({"unpack", blob, "-o", back});
      REQUIRE_MESSAGE(r.status == 0, r.err);
      // The package again: packing it gives the same weights (the package's
      // .data/serialization_id is new, so the skeleton is not the same).
      const std::string again = dir / "again.zcb";
      r = test::run_cli({"pack", back, "-o", again, "--quiet"});
      REQUIRE_MESSAGE(r.status == 0, r.err);
      const zcwrap::BlobInfo a = zcwrap::describe(blob), b = zcwrap::describe(again);
      CHECK(a.storage_bytes == b.storage_bytes);
      CHECK(a.tensor_bytes == b.tensor_bytes);
      REQUIRE(a.storage_count == b.storage_count);
    }
  }
}

TEST_CASE("AOTInductor: a bad input to run is one line, exit 5" * doctest::skip(skipped())) {
  test::TempDir dir;
  const std::string blob = dir / "m.zcb";
  zcwrap::ModelWrapper::pack_files({{"m", aoti_fixture("cnn_so.pt2")}}, zcwrap::Layout::kStandalone, blob);
  // Two inputs for a model of one.
  const std::string two = dir / "two.pt";
  const at::Tensor x = tensors_of(test::load_value(aoti_fixture("cnn_in.pt")))[0];
  const std::vector<char> bytes = torch::jit::pickle_save(c10::ivalue::Tuple::create({x, x}));
  test::write_bytes(two, std::string(bytes.begin(), bytes.end()));
  const test::ProcessResult r = test::run_cli({"run", blob, "--input", two, "--output", dir / "out.pt"});
  test::check_failure(r, 5, "takes 1 input tensor, got 2");
  CHECK_FALSE(test::file_exists(dir / "out.pt"));
}

TEST_CASE("AOTInductor: unwrap works where LibTorch was loaded RTLD_LOCAL (as in Python)" * doctest::skip(skipped())) {
  const std::string spec = std::getenv("ZCWRAP_AOTI_DLOPEN");
  const std::string host = spec.substr(0, spec.find(':')), plugin = spec.substr(spec.find(':') + 1);
  test::TempDir dir;
  const std::string blob = dir / "m.zcb", out = dir / "out.pt";
  zcwrap::ModelWrapper::pack_files({{"m", aoti_fixture("transformer_disk.pt2")}}, zcwrap::Layout::kStandalone, blob);
  const test::ProcessResult r = test::run_process({host, plugin, blob, aoti_fixture("transformer_in.pt"), out});
  MESSAGE(r.out);
  REQUIRE_MESSAGE(r.status == 0, r.out << r.err);
  // The situation under test did arise: LibTorch was not global before.
  CHECK(r.out.find("ok; libtorch was local before the unwrap") != std::string::npos);
  std::string why;
  CHECK_MESSAGE(test::bit_equal(as_reference(test::load_value(out)),
                                test::load_value(aoti_fixture("transformer_disk_ref.pt")), &why),
                why);
}

TEST_CASE("AOTInductor: a CPU package unwrapped for CUDA is a device error" * doctest::skip(skipped())) {
  test::TempDir dir;
  const std::string blob = dir / "m.zcb";
  zcwrap::ModelWrapper::pack_files({{"m", aoti_fixture("cnn_so.pt2")}}, zcwrap::Layout::kStandalone, blob);
  zcwrap::UnwrapOptions options;
  options.device = "cuda";
  try {
    zcwrap::ModelWrapper::open(blob).unwrap(options);
    FAIL("unwrapped a CPU package onto CUDA");
  } catch (const zcwrap::Error& e) {
    // Without a GPU, the device itself is refused; with one, the package.
    MESSAGE(e.what());
    CHECK(e.code() == zcwrap::ErrorCode::kDevice);
  }
}

// build/cli/zcwrap -> build/samples/zcwrap-sample (absent with -Dsamples=disabled).
std::string sample_path() {
  const std::string bin = test::zcwrap_bin();
  return bin.substr(0, bin.rfind("/cli/")) + "/samples/zcwrap-sample";
}

TEST_CASE("AOTInductor: the sample worker serves it and a TorchScript model through the same call" *
          doctest::skip(skipped() || !test::file_exists(sample_path()))) {
  const std::string sample = sample_path();
  test::TempDir dir;
  const std::vector<std::pair<std::string, std::string>> models = {
      {aoti_fixture("cnn_disk.pt2"), aoti_fixture("cnn_in.pt")},
      {test::fixture("resnet18_scripted.pt"), test::fixture("resnet18_scripted_in.pt")}};
  for (const auto& [model, input] : models) {
    const std::string blob = dir / "m.zcb";
    REQUIRE(test::run_cli({"pack", model, "-o", blob, "--quiet"}).status == 0);
    const test::ProcessResult r =
        test::run_process({sample, "drive", "--config", dir / "m.actor.json", "--input", input, "--workers", "2",
                           "--batches", "2"});
    CHECK_MESSAGE(r.status == 0, model << ": " << r.err);
    CHECK_MESSAGE(r.out.find("outputs: bit-equal in both workers") != std::string::npos, r.out);
  }
}

TEST_CASE("AOTInductor: zcwrap bench runs its workers on it, one shared copy of the weights" * doctest::skip(skipped())) {
  test::TempDir dir;
  const std::string blob = dir / "m.zcb";
  REQUIRE(test::run_cli({"pack", aoti_fixture("cnn_so.pt2"), "-o", blob, "--quiet"}).status == 0);
  const test::ProcessResult r =
      test::run_cli({"bench", dir / "m.actor.json", "--workers", "2", "--input", aoti_fixture("cnn_in.pt")});
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK_MESSAGE(r.out.find("(one shared copy)") != std::string::npos, r.out);
  CHECK_MESSAGE(r.out.find("bit-equal in all 2 workers") != std::string::npos, r.out);
}

// force_mmap_weights appends the weights after the .so's ELF contents: they
// are cut out of it all the same, and the placed .so holds a hole there.
TEST_CASE("AOTInductor: a force_mmap_weights package's appended weights are cut out too" * doctest::skip(skipped())) {
  test::TempDir dir;
  ::setenv("ZCWRAP_STORE", (dir / "store").c_str(), 1);
  const std::string blob = dir / "m.zcb";
  zcwrap::ModelWrapper::pack_files({{"m", aoti_fixture("cnn_mmap.pt2")}}, zcwrap::Layout::kStandalone, blob);
  const zcwrap::BlobInfo info = zcwrap::describe(blob);
  CHECK(info.unshared_bytes == 0);
  {
    Loaded l = unwrap(blob);
    struct stat st {};
    REQUIRE(::stat(l.model().library_path().c_str(), &st) == 0);
    CHECK(static_cast<uint64_t>(st.st_blocks) * 512 < static_cast<uint64_t>(st.st_size) - info.storage_bytes / 2);
  }
  ::unsetenv("ZCWRAP_STORE");
}
