// The library API on real architectures: what comes out of a blob equals
// torch::jit::load of the original bit for bit, and points into the mapping.
#include "torch_support.hpp"  // first: see there

#include <algorithm>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "file_util.hpp"
#include "format.hpp"
#include "placement.hpp"
#include "torch_util.hpp"

using nlohmann::json;
using zcwrap::Error;
using zcwrap::ErrorCode;
using zcwrap::Layout;
using zcwrap::ModelWrapper;
using zcwrap::PackOptions;
using zcwrap::Unwrapped;
namespace test = zcwrap::test;

namespace {

ErrorCode error_code_of(const std::function<void()>& fn, std::string* message = nullptr) {
  try {
    fn();
  } catch (const Error& e) {
    if (message != nullptr) *message = e.what();
    return e.code();
  }
  FAIL("expected a zcwrap::Error");
  return ErrorCode::kInternal;
}

// Every tensor the module holds (parameters, buffers, plain attributes),
// recursively.
void check_all_in_mapping(const torch::jit::Module& module, const Unwrapped& u, size_t* count) {
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    CAPTURE(p.name);
    CHECK(test::points_into(p.value, u));
    CHECK_FALSE(p.value.requires_grad());
    ++*count;
  }
  for (const auto& b : module.named_buffers(/*recurse=*/true)) {
    if (!b.value.defined() || b.value.numel() == 0) continue;
    CAPTURE(b.name);
    CHECK(test::points_into(b.value, u));
    ++*count;
  }
}

at::Tensor attr_tensor(const torch::jit::Module& m, const std::string& dotted) {
  torch::jit::Module cur = m;
  std::string rest = dotted;
  for (size_t dot; (dot = rest.find('.')) != std::string::npos; rest = rest.substr(dot + 1)) {
    cur = cur.attr(rest.substr(0, dot)).toModule();
  }
  return cur.attr(rest).toTensor();
}

}  // namespace

TEST_CASE("the format's dtype table agrees with LibTorch's dtypes") {
  for (const zcwrap::format::Dtype& d : zcwrap::format::kDtypes) {
    const std::string name(d.name);
    CAPTURE(name);
    const at::ScalarType type = zcwrap::detail::dtype_from_name(name);
    CHECK(static_cast<int>(type) == d.torch_code);
    CHECK(c10::elementSize(type) == d.size);
    CHECK(c10::isQIntType(type) == d.quantized);
    CHECK(zcwrap::detail::dtype_name(type) == name);
  }
  // What LibTorch calls these, for the codes that matter most.
  CHECK(zcwrap::detail::dtype_name(at::kFloat) == "float32");
  CHECK(zcwrap::detail::dtype_name(at::kBFloat16) == "bfloat16");
  CHECK(zcwrap::detail::dtype_name(at::kBool) == "bool");
  CHECK(zcwrap::detail::dtype_name(at::kQUInt8) == "quint8");
  CHECK(zcwrap::detail::dtype_name(at::kComplexHalf) == "complex32");
  CHECK(zcwrap::detail::dtype_name(at::kQUInt4x2).empty());
}

TEST_CASE("every fixture model comes back bit-equal to torch::jit::load, weights in the mapping") {
  for (const json& fx : test::fixtures_index()["models"]) {
    if (fx.value("group", "") == "hard") continue;  // tests/test_hard.cpp
    const std::string name = fx["name"];
    const std::string model_path = test::fixture(fx["file"]);
    const std::string input_path = test::fixture(fx["input"]);
    const std::string method = fx["method"];
    CAPTURE(name);
    test::TempDir dir;
    const std::string blob = dir / "m.zcb";
    ModelWrapper w = ModelWrapper::pack_files({{"m", model_path}}, Layout::kStandalone, blob);
    CHECK(w.is_standalone_module());
    CHECK((w.model_names() == std::vector<std::string>{"model"}));

    Unwrapped u = w.unwrap();
    torch::jit::Module& module = u.module();
    CHECK_FALSE(module.is_training());
    size_t checked = 0;
    check_all_in_mapping(module, u, &checked);
    CHECK(checked > 0);

    std::string why;
    const c10::IValue expected = test::reference_output(model_path, method, input_path);
    const c10::IValue got = test::call(module, method, test::load_inputs(input_path));
    CHECK_MESSAGE(test::bit_equal(expected, got, &why), why);

    const json info = zcwrap::describe(blob);
    CHECK(info["models"][0]["unshared_bytes"] == 0);
    CHECK(info["models"][0]["shared_fraction"] == 1.0);
    CHECK(info["models"][0]["shared_bytes"].get<uint64_t>() > 0);
  }
}

TEST_CASE("edge cases keep dtype, views, aliasing, 0-dim, empty and container tensors") {
  test::TempDir dir;
  ModelWrapper w =
      ModelWrapper::pack_files({{"edge", test::fixture("edge.pt")}}, Layout::kStandalone, dir / "edge.zcb");
  Unwrapped u = w.unwrap();
  torch::jit::Module& m = u.module();

  SUBCASE("tied weights are one storage") {
    const at::Tensor a = attr_tensor(m, "a.weight");
    const at::Tensor b = attr_tensor(m, "b.weight");
    CHECK(a.storage().unsafeGetStorageImpl() == b.storage().unsafeGetStorageImpl());
    CHECK(a.data_ptr() == b.data_ptr());
    CHECK(test::points_into(a, u));
  }
  SUBCASE("offset and non-contiguous views share their base storage") {
    const at::Tensor big = attr_tensor(m, "big");
    const at::Tensor mid = attr_tensor(m, "mid");
    CHECK(mid.storage().unsafeGetStorageImpl() == big.storage().unsafeGetStorageImpl());
    CHECK(mid.storage_offset() == 3);
    const at::Tensor base = attr_tensor(m, "base");
    const at::Tensor base_t = attr_tensor(m, "base_t");
    CHECK_FALSE(base_t.is_contiguous());
    CHECK((base_t.strides().vec() == std::vector<int64_t>{1, 4}));
    CHECK(base_t.storage().unsafeGetStorageImpl() == base.storage().unsafeGetStorageImpl());
    const at::Tensor alias = m.attr("tdict").toGenericDict().at("alias").toTensor();
    CHECK(alias.storage().unsafeGetStorageImpl() == big.storage().unsafeGetStorageImpl());
    CHECK(alias.storage_offset() == 10);
  }
  SUBCASE("0-dim and zero-element tensors") {
    CHECK(attr_tensor(m, "scalar").dim() == 0);
    CHECK((attr_tensor(m, "empty").sizes().vec() == std::vector<int64_t>{0, 3}));
  }
  SUBCASE("every dtype survives") {
    const std::vector<std::pair<std::string, at::ScalarType>> dtypes = {
        {"buf_bool", at::kBool},    {"buf_i8", at::kChar},      {"buf_i64", at::kLong},
        {"buf_f16", at::kHalf},     {"buf_bf16", at::kBFloat16}, {"buf_f64", at::kDouble},
        {"buf_c64", at::kComplexFloat}};
    torch::jit::Module original = torch::jit::load(test::fixture("edge.pt"));
    for (const auto& [name, dtype] : dtypes) {
      CAPTURE(name);
      const at::Tensor t = attr_tensor(m, name);
      CHECK((t.scalar_type() == dtype));
      CHECK(test::points_into(t, u));
      std::string why;
      CHECK_MESSAGE(test::bit_equal(attr_tensor(original, name), t, &why), why);
    }
  }
  SUBCASE("plain attributes and list/dict attributes point into the mapping") {
    CHECK(test::points_into(attr_tensor(m, "plain"), u));
    for (const c10::IValue& t : m.attr("tlist").toList()) CHECK(test::points_into(t.toTensor(), u));
    for (const auto& e : m.attr("tdict").toGenericDict()) CHECK(test::points_into(e.value().toTensor(), u));
    const json info = zcwrap::describe(dir / "edge.zcb");
    std::set<std::string> kinds;
    for (const json& t : info["models"][0]["tensors"]) kinds.insert(t["kind"].get<std::string>());
    CHECK((kinds == std::set<std::string>{"parameter", "buffer", "attribute", "container"}));
  }
  SUBCASE("methods besides forward") {
    torch::jit::Module original = torch::jit::load(test::fixture("edge.pt"));
    CHECK(test::call(m, "describe", {}) == test::call(original, "describe", {}));
  }
}

TEST_CASE("a pipeline shares a tensor tied across its models, and names its models") {
  test::TempDir dir;
  ModelWrapper w = ModelWrapper::pack_files(
      {{"a", test::fixture("pipeline_a.pt")}, {"b", test::fixture("pipeline_b.pt")}}, Layout::kPipeline, dir / "p.zcb");
  CHECK_FALSE(w.is_standalone_module());
  CHECK((w.model_names() == std::vector<std::string>{"a", "b"}));
  Unwrapped u = w.unwrap();
  CHECK(attr_tensor(u.at("a"), "emb.weight").data_ptr() == attr_tensor(u.at("b"), "proj.weight").data_ptr());
  std::string message;
  CHECK(error_code_of([&] { u.module(); }, &message) == ErrorCode::kUsage);
  CHECK(message.find("a, b") != std::string::npos);
  CHECK(error_code_of([&] { u.at("c"); }, &message) == ErrorCode::kUsage);
  for (const char* name : {"a", "b"}) {
    const std::string n = std::string("pipeline_") + name;
    std::string why;
    CHECK(test::bit_equal(test::reference_output(test::fixture(n + ".pt"), "forward", test::fixture(n + "_in.pt")),
                          test::call(u.at(name), "forward", test::load_inputs(test::fixture(n + "_in.pt"))), &why));
  }
  CHECK(zcwrap::describe(dir / "p.zcb").dedup_saved_bytes >= 50 * 16 * 4);
}

TEST_CASE("from_model packs into the store by content and leaves the module alone") {
  test::TempDir store;
  PackOptions options;
  options.store_dir = store.path();
  torch::jit::Module original = torch::jit::load(test::fixture("edge.pt"));
  const at::Tensor weight = attr_tensor(original, "a.weight");
  const at::Tensor before = weight.clone();

  ModelWrapper w1 = ModelWrapper::from_model(original, options);
  ModelWrapper w2 = ModelWrapper::from_model(original, options);
  CHECK(w1.blob_path() == w2.blob_path());
  CHECK(test::list_dir(store.path()).size() == 1);
  CHECK(attr_tensor(original, "a.weight").data_ptr() == weight.data_ptr());
  CHECK(torch::equal(attr_tensor(original, "a.weight"), before));

  Unwrapped u = ModelWrapper::from_actor(w1.to_actor()).unwrap();
  std::string why;
  const c10::IValue x = test::load_inputs(test::fixture("edge_in.pt"))[0];
  CHECK_MESSAGE(test::bit_equal(test::call(original, "forward", {x}), test::call(u.module(), "forward", {x}), &why), why);

  SUBCASE("ZCWRAP_STORE chooses the store") {
    test::TempDir env_store;
    ::setenv("ZCWRAP_STORE", env_store.path().c_str(), 1);
    ModelWrapper w = ModelWrapper::from_model(original);
    ::unsetenv("ZCWRAP_STORE");
    CHECK(w.blob_path().rfind(env_store.path() + "/", 0) == 0);
  }
  SUBCASE("an unusable store is a clear error naming ZCWRAP_STORE") {
    PackOptions bad;
    bad.store_dir = "/proc/zcwrap-store";
    std::string message;
    CHECK(error_code_of([&] { ModelWrapper::from_model(original, bad); }, &message) == ErrorCode::kWrite);
    CHECK(message.find("ZCWRAP_STORE") != std::string::npos);
  }
}

namespace {

// Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN), tried once.
bool can_mount_tmpfs() {
  static const bool can = [] {
    char dir[] = "/tmp/zcwrap-mount-XXXXXX";
    if (::mkdtemp(dir) == nullptr) return false;
    const bool mounted = ::mount("zcwrap-test", dir, "tmpfs", 0, "size=64k") == 0;
    if (mounted) ::umount(dir);
    ::rmdir(dir);
    return mounted;
  }();
  return can;
}

}  // namespace

TEST_CASE("a store without room (a small /dev/shm) is a clear error naming ZCWRAP_STORE" *
          doctest::skip(!can_mount_tmpfs())) {
  test::TempDir dir;
  // A 1 MiB tmpfs, like a container's small /dev/shm.
  const std::string store = dir / "shm";
  ::mkdir(store.c_str(), 0755);
  // mode=0700: a tmpfs's root is 1777 by default, which the store refuses.
  REQUIRE_MESSAGE(::mount("zcwrap-test", store.c_str(), "tmpfs", 0, "size=1m,mode=0700") == 0, std::strerror(errno));
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount(path.c_str()); }
  } unmount{store};
  PackOptions options;
  options.store_dir = store;
  std::string message;
  CHECK(error_code_of([&] { ModelWrapper::from_model(torch::jit::load(test::fixture("mobilenet_traced.pt")), options); },
                      &message) == ErrorCode::kWrite);
  CHECK(message.find("ZCWRAP_STORE") != std::string::npos);
  CHECK(message.find("no room") != std::string::npos);
  CHECK(test::list_dir(store).empty());
}

TEST_CASE("the store: a wrapper and an unwrap hold their blob against gc; a folder others can write is refused") {
  test::TempDir dir;
  PackOptions options;
  options.store_dir = dir / "store";
  const torch::jit::Module model = torch::jit::load(test::fixture("lstm.pt"));
  std::string path;
  {
    ModelWrapper w = ModelWrapper::from_model(model, options);
    path = w.blob_path();
    struct stat st {};
    REQUIRE(::stat(options.store_dir.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0700);
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0600);
    CHECK(zcwrap::gc({options.store_dir, false}).empty());  // the wrapper holds it
    Unwrapped u = ModelWrapper::from_actor(w.to_actor()).unwrap();
    w = ModelWrapper::open(path);  // drops the packing wrapper's hold
    CHECK(zcwrap::gc({options.store_dir, false}).empty());  // the unwrap and the open map it
  }
  const std::vector<zcwrap::StoreFile> dry = zcwrap::gc({options.store_dir, true});
  REQUIRE(dry.size() == 1);
  CHECK(dry[0].path == path);
  CHECK_FALSE(dry[0].temporary);
  CHECK(test::list_dir(options.store_dir).size() == 1);
  CHECK(zcwrap::gc({options.store_dir, false}).size() == 1);
  CHECK(test::list_dir(options.store_dir).empty());

  ::chmod(options.store_dir.c_str(), 0777);
  std::string message;
  CHECK(error_code_of([&] { ModelWrapper::from_model(model, options); }, &message) == ErrorCode::kWrite);
  CHECK(message.find("is writable by others (mode 0777)") != std::string::npos);
  CHECK(error_code_of([&] { zcwrap::gc({options.store_dir, false}); }) == ErrorCode::kWrite);
  CHECK(test::list_dir(options.store_dir).empty());
}

TEST_CASE("from_pipeline and ActorWrapper round-trip through the actor config") {
  test::TempDir store;
  PackOptions options;
  options.store_dir = store.path();
  std::vector<std::pair<std::string, torch::jit::Module>> models = {
      {"a", torch::jit::load(test::fixture("pipeline_a.pt"))}, {"b", torch::jit::load(test::fixture("pipeline_b.pt"))}};
  zcwrap::ActorWrapper actor(models, "cpu", /*use_fast_load=*/false, options);
  const json config = actor.to_actor();
  CHECK(config["device"] == "cpu");
  CHECK(config["models"] == json({"a", "b"}));
  Unwrapped u = zcwrap::ActorWrapper::from_actor(json::parse(config.dump())).load();
  CHECK(attr_tensor(u.at("a"), "emb.weight").data_ptr() == attr_tensor(u.at("b"), "proj.weight").data_ptr());

  std::string message;
  CHECK(error_code_of([&] { ModelWrapper::from_pipeline({}, options); }) == ErrorCode::kUsage);
  CHECK(error_code_of([&] { ModelWrapper::from_pipeline({models[0], models[0]}, options); }, &message) ==
        ErrorCode::kUsage);
  CHECK(message.find("given twice") != std::string::npos);
  CHECK(error_code_of([&] { ModelWrapper::from_pipeline({{"a b", models[0].second}}, options); }) ==
        ErrorCode::kUsage);
}

TEST_CASE("Unwrapped's models: one handle for every kind, with its tensors, kind and run()") {
  test::TempDir dir;
  const std::string blob = dir / "p.zcb";
  const ModelWrapper w = ModelWrapper::pack_files(
      {{"a", test::fixture("pipeline_a.pt")}, {"b", test::fixture("pipeline_b.pt")}}, Layout::kPipeline, blob);
  CHECK((w.model_kinds() == std::vector<std::string>{"torchscript", "torchscript"}));
  CHECK((ModelWrapper::open(blob).model_kinds() == w.model_kinds()));
  Unwrapped u = w.unwrap();
  std::vector<Unwrapped::Model> models = u.models();
  REQUIRE(models.size() == 2);
  for (Unwrapped::Model& m : models) {
    CAPTURE(m.name());
    CHECK(m.kind() == "torchscript");
    CHECK(m.is_torchscript());
    // tensors(): every tensor of the manifest, in its order, inside the mapping.
    const json manifest_tensors = json(zcwrap::describe(blob))["models"][m.name() == "a" ? 0 : 1]["tensors"];
    REQUIRE(m.tensors().size() == manifest_tensors.size());
    for (size_t i = 0; i < m.tensors().size(); ++i) {
      CHECK(test::points_into(m.tensors()[i], u));
      CHECK(m.tensors()[i].sizes().vec() == manifest_tensors[i]["shape"].get<std::vector<int64_t>>());
    }
  }
  const void* emb = attr_tensor(models[0].module(), "emb.weight").data_ptr();
  CHECK(std::any_of(models[0].tensors().begin(), models[0].tensors().end(),
                    [&](const at::Tensor& t) { return t.data_ptr() == emb; }));
  // run() is the module's forward, bit for bit; a handle outlives the Unwrapped it came from.
  const std::vector<c10::IValue> inputs = test::load_inputs(test::fixture("pipeline_a_in.pt"));
  const c10::IValue expected = u.at("a").forward(inputs);
  Unwrapped::Model a = u.model("a");
  u = w.unwrap();
  std::string why;
  CHECK_MESSAGE(test::bit_equal(expected, a.run(inputs), &why), why);
  std::string message;
  CHECK(error_code_of([&] { u.model(); }, &message) == ErrorCode::kUsage);
  CHECK(message.find("holds a pipeline") != std::string::npos);
  CHECK(error_code_of([&] { u.model("c"); }, &message) == ErrorCode::kUsage);
  CHECK(message.find("the blob holds: a, b") != std::string::npos);
}

TEST_CASE("ActorWrapper's config carries device and use_fast_load, each with the constructor's default") {
  test::TempDir dir;
  const std::string blob = dir / "m.zcb";
  const ModelWrapper w = ModelWrapper::pack_files({{"m", test::fixture("pipeline_a.pt")}}, Layout::kStandalone, blob);
  const json config = zcwrap::ActorWrapper(w, "cpu", /*use_fast_load=*/true).to_actor();
  CHECK(config["use_fast_load"] == true);
  const zcwrap::ActorWrapper back = zcwrap::ActorWrapper::from_actor(config);
  CHECK(back.device() == "cpu");
  CHECK(back.use_fast_load());
  // The Python package's configs name neither when they are the defaults.
  const zcwrap::ActorWrapper plain = zcwrap::ActorWrapper::from_actor(w.to_actor());
  CHECK(plain.device() == "cpu");
  CHECK_FALSE(plain.use_fast_load());
  json bad = w.to_actor();
  bad["device"] = 3;
  CHECK(error_code_of([&] { zcwrap::ActorWrapper::from_actor(bad); }) == ErrorCode::kBadBlob);
}

TEST_CASE("an actor config that no longer matches its blob is refused") {
  test::TempDir dir;
  const std::string blob = dir / "m.zcb";
  const json config = ModelWrapper::pack_files({{"m", test::fixture("edge.pt")}}, Layout::kStandalone, blob).to_actor();
  ModelWrapper::pack_files({{"m", test::fixture("lstm.pt")}}, Layout::kStandalone, blob);
  std::string message;
  CHECK(error_code_of([&] { ModelWrapper::from_actor(config); }, &message) == ErrorCode::kStale);
  CHECK(message.find("re-packed or replaced") != std::string::npos);
  ::unlink(blob.c_str());
  CHECK(error_code_of([&] { ModelWrapper::from_actor(config); }) == ErrorCode::kStale);
  json broken = config;
  broken.erase("blob_size");
  CHECK(error_code_of([&] { ModelWrapper::from_actor(broken); }) == ErrorCode::kBadBlob);
  CHECK(error_code_of([&] { ModelWrapper::from_actor(json::array()); }) == ErrorCode::kBadBlob);
}

TEST_CASE("devices that do not exist are clear errors") {
  test::TempDir dir;
  ModelWrapper w = ModelWrapper::pack_files({{"m", test::fixture("lstm.pt")}}, Layout::kStandalone, dir / "m.zcb");
  std::string message;
  CHECK(error_code_of([&] { w.unwrap("banana"); }, &message) == ErrorCode::kDevice);
  CHECK(message.find("banana") != std::string::npos);
  if (!zcwrap::detail::load_cuda_backend() || !at::hasCUDA()) {
    CHECK(error_code_of([&] { w.unwrap("cuda:0"); }, &message) == ErrorCode::kDevice);
    CHECK(message.find("cuda:0") != std::string::npos);
    CHECK(message.find(zcwrap::detail::load_cuda_backend() ? "no CUDA device" : "no CUDA support") !=
          std::string::npos);
  }
}

TEST_CASE("the mapping outlives Unwrapped and the blob file") {
  test::TempDir dir;
  const std::string blob = dir / "m.zcb";
  torch::jit::Module kept;
  {
    Unwrapped u =
        ModelWrapper::pack_files({{"m", test::fixture("transformer.pt")}}, Layout::kStandalone, blob).unwrap();
    kept = u.module();
  }
  ::unlink(blob.c_str());
  std::string why;
  const std::string input = test::fixture("transformer_in.pt");
  CHECK_MESSAGE(test::bit_equal(test::reference_output(test::fixture("transformer.pt"), "forward", input),
                                test::call(kept, "forward", test::load_inputs(input)), &why),
                why);
}

TEST_CASE("from_memory unwraps a blob in caller-owned memory and keeps its owner alive") {
  test::TempDir dir;
  const std::string model = test::fixture("transformer.pt");
  ModelWrapper::pack_files({{"m", model}}, Layout::kStandalone, dir / "m.zcb");
  const std::string bytes = test::read_bytes(dir / "m.zcb");
  // 64-byte aligned memory the test owns; its deleter records the release.
  bool released = false;
  std::shared_ptr<uint8_t> memory(static_cast<uint8_t*>(std::aligned_alloc(64, (bytes.size() + 63) / 64 * 64)),
                                  [&released](uint8_t* p) {
                                    released = true;
                                    std::free(p);
                                  });
  std::memcpy(memory.get(), bytes.data(), bytes.size());
  ::unlink((dir / "m.zcb").c_str());  // nothing reads the file from here on

  const std::string input = test::fixture("transformer_in.pt");
  torch::jit::Module kept;
  {
    ModelWrapper w = ModelWrapper::from_memory({memory.get(), bytes.size(), memory, "test memory"});
    CHECK(w.in_memory());
    CHECK(w.model_names() == std::vector<std::string>{"model"});  // a standalone model's name
    CHECK(w.blob_path() == "test memory");
    std::string message;
    CHECK(error_code_of([&] { (void)w.to_actor(); }, &message) == ErrorCode::kUsage);
    CHECK(message.find("from_memory") != std::string::npos);
    // Heap memory is private and writable: the weights are a read-only copy,
    // and the caller's memory keeps its protection.
    Unwrapped u = w.unwrap();
    CHECK(u.mapping_data() != memory.get());
    CHECK(zcwrap::detail::mapped_readonly(u.mapping_data(), u.mapping_size()));
    CHECK_FALSE(zcwrap::detail::mapped_readonly(memory.get(), bytes.size()));
    // copy_on_write: a private, writable copy, which a write does not carry back.
    zcwrap::UnwrapOptions cow;
    cow.copy_on_write = true;
    {
      Unwrapped mine = w.unwrap(cow);
      at::Tensor first = (*mine.module().parameters().begin());
      const float before = first.view(-1)[0].item<float>();
      first.view(-1)[0].fill_(before + 1000);
      CHECK(first.view(-1)[0].item<float>() == before + 1000);
      CHECK((*w.unwrap().module().parameters().begin()).view(-1)[0].item<float>() == before);
    }
    size_t count = 0;
    check_all_in_mapping(u.module(), u, &count);
    CHECK(count > 0);
    kept = u.module();
  }
  const uint8_t* address = memory.get();
  memory.reset();
  CHECK_FALSE(released);  // the module's tensors hold it
  std::string why;
  CHECK_MESSAGE(test::bit_equal(test::reference_output(model, "forward", input),
                                test::call(kept, "forward", test::load_inputs(input)), &why),
                why);
  CHECK(static_cast<const void*>(address) != nullptr);
  kept = torch::jit::Module();
  CHECK(released);

  SUBCASE("shared memory is mapped again, read-only: the same pages, no copy") {
    // As Ray's object store: a writable MAP_SHARED region, the blob at an
    // offset that is not page-aligned.
    const size_t offset = 192;
    const size_t length = bytes.size() + offset;
    void* region = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(region != MAP_FAILED);
    auto* blob = static_cast<uint8_t*>(region) + offset;
    std::memcpy(blob, bytes.data(), bytes.size());
    {
      Unwrapped u = ModelWrapper::from_memory({blob, bytes.size(), nullptr, "shared"}).unwrap();
      CHECK(u.mapping_data() != blob);
      CHECK(reinterpret_cast<uintptr_t>(u.mapping_data()) % 4096 == offset);
      CHECK(zcwrap::detail::mapped_readonly(u.mapping_data(), u.mapping_size()));
      CHECK_FALSE(zcwrap::detail::mapped_readonly(region, length));  // the caller's mapping is left as it was
      size_t count = 0;
      check_all_in_mapping(u.module(), u, &count);
      CHECK(count > 0);
      // A change made through the caller's mapping shows through unwrap's:
      // one set of pages.
      at::Tensor first = *u.module().parameters().begin();
      auto* mine = static_cast<uint8_t*>(first.data_ptr());
      uint8_t* theirs = blob + (mine - static_cast<const uint8_t*>(u.mapping_data()));
      const uint8_t was = *mine;
      *theirs ^= 0xFF;
      CHECK(*mine == static_cast<uint8_t>(was ^ 0xFF));
    }
    ::munmap(region, length);
  }

  SUBCASE("misaligned or damaged memory is a bad blob") {
    std::vector<uint8_t> copy(bytes.size() + 64);
    uint8_t* aligned = copy.data() + (64 - reinterpret_cast<uintptr_t>(copy.data()) % 64) % 64;
    std::memcpy(aligned + 1, bytes.data(), bytes.size());
    std::string message;
    CHECK(error_code_of([&] { ModelWrapper::from_memory({aligned + 1, bytes.size(), nullptr, "odd"}); },
                        &message) == ErrorCode::kBadBlob);
    CHECK(message.find("odd: memory region at") != std::string::npos);
    std::memcpy(aligned, bytes.data(), bytes.size());
    aligned[200] ^= 0x40;  // inside the manifest
    CHECK(error_code_of([&] { ModelWrapper::from_memory({aligned, bytes.size(), nullptr, "flipped"}); },
                        &message) == ErrorCode::kBadBlob);
    CHECK(message.rfind("flipped: ", 0) == 0);
    CHECK(error_code_of([&] { ModelWrapper::from_memory({aligned, 100, nullptr, "short"}); }) == ErrorCode::kBadBlob);
  }
}

TEST_CASE("packing is deterministic") {
  test::TempDir dir;
  ModelWrapper::pack_files({{"a", test::fixture("pipeline_a.pt")}, {"b", test::fixture("pipeline_b.pt")}},
                           Layout::kPipeline, dir / "1.zcb");
  ModelWrapper::pack_files({{"a", test::fixture("pipeline_a.pt")}, {"b", test::fixture("pipeline_b.pt")}},
                           Layout::kPipeline, dir / "2.zcb");
  CHECK(test::read_bytes(dir / "1.zcb") == test::read_bytes(dir / "2.zcb"));
}

TEST_CASE("bad alignment and bad model files are refused before anything is written") {
  test::TempDir dir;
  PackOptions options;
  for (uint64_t align : {0ull, 32ull, 3000ull, 4ull << 20}) {
    options.alignment = align;
    CAPTURE(align);
    CHECK(error_code_of([&] {
            ModelWrapper::pack_files({{"m", test::fixture("lstm.pt")}}, Layout::kStandalone, dir / "x.zcb", options);
          }) ==
          ErrorCode::kUsage);
  }
  for (const json& bad : test::fixtures_index()["bad"]) {
    CAPTURE(bad["file"].get<std::string>());
    CHECK(error_code_of([&] {
            ModelWrapper::pack_files({{"m", test::fixture(bad["file"])}}, Layout::kStandalone, dir / "x.zcb");
          }) ==
          ErrorCode::kBadModel);
  }
  CHECK(test::list_dir(dir.path()).empty());
}
