// Fast load: the chunk plan and the staging pipeline (driven by a fake
// copier that checks the order of operations), the views of one buffer, and
// on a GPU the whole path against the per-storage one and torch::jit::load.
// The GPU cases are skipped, with a message, where CUDA is not available.
#include "torch_support.hpp"  // first: see there

#include <atomic>
#include <cstring>
#include <map>
#include <random>

#include <torch/cuda.h>

#include "blob_file.hpp"
#include "placement.hpp"
#include "fast_load.hpp"
#include "torch_util.hpp"
#include "tensor_walk.hpp"

using zcwrap::Error;
using zcwrap::ErrorCode;
using zcwrap::Layout;
using zcwrap::ModelWrapper;
using zcwrap::PackOptions;
using zcwrap::Unwrapped;
using zcwrap::detail::BlobFile;
using zcwrap::detail::ChunkPlan;
using zcwrap::detail::Copier;
using zcwrap::detail::FastLoadOptions;
using zcwrap::detail::FillPool;
namespace internal = zcwrap::detail;
namespace format = zcwrap::format;
namespace test = zcwrap::test;

namespace {

constexpr uint64_t kPage = format::kPageSize;

FastLoadOptions options(uint64_t chunk_bytes, unsigned buffers, unsigned threads) {
  FastLoadOptions o;
  o.chunk_bytes = chunk_bytes;
  o.buffers = buffers;
  o.threads = threads;
  return o;
}

// Bytes that differ from their neighbours everywhere, from a seeded RNG.
std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(n);
  for (uint8_t& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

// A Copier whose "device" is host memory. A copy really happens only when
// its buffer is waited for (or at finish), the latest moment an asynchronous
// copy may run: refilling a buffer before waiting for it corrupts the
// destination. A completed buffer is poisoned, so a chunk submitted without
// being filled is caught too. Order violations are collected as text.
class FakeCopier final : public Copier {
 public:
  FakeCopier(const ChunkPlan& plan, uint64_t device_bytes)
      : device(device_bytes, 0xEE),
        writes(device_bytes, 0),
        plan_(plan),
        staging_(plan.buffers, std::vector<uint8_t>(plan.buffer_bytes, 0xA5)),
        state_(plan.buffers, State::kIdle),
        pending_(plan.buffers) {}

  uint8_t* buffer(unsigned k) override {
    if (k >= plan_.buffers) {
      violation("buffer(" + std::to_string(k) + ") beyond the plan");
      return nullptr;
    }
    if (state_[k] == State::kInFlight) {
      violation("buffer " + std::to_string(k) + " refilled before its copy was waited for");
    }
    state_[k] = State::kFilling;
    return staging_[k].data();
  }

  void submit(unsigned k, uint64_t device_offset, uint64_t length) override {
    ++submits;
    if (fail_at_submit != 0 && submits == fail_at_submit) {
      throw Error(ErrorCode::kDevice, "fake copy failure");
    }
    if (state_[k] != State::kFilling) violation("buffer " + std::to_string(k) + " submitted without being filled");
    if (length == 0 || length > plan_.buffer_bytes) violation("copy of " + std::to_string(length) + " bytes");
    if (device_offset % kPage != 0) violation("copy to unaligned offset " + std::to_string(device_offset));
    if (device_offset > device.size() || length > device.size() - device_offset) {
      violation("copy past the end of the device buffer");
      return;
    }
    pending_[k] = {device_offset, length};
    state_[k] = State::kInFlight;
    max_in_flight = std::max(max_in_flight, in_flight());
  }

  void wait(unsigned k) override {
    ++waits;
    complete(k);
  }

  void finish() override {
    ++finishes;
    for (unsigned k = 0; k < plan_.buffers; ++k) complete(k);
  }

  std::vector<uint8_t> device;
  std::vector<uint8_t> writes;  // times each device byte was written
  std::vector<std::string> violations;
  size_t submits = 0;
  size_t waits = 0;
  size_t finishes = 0;
  size_t fail_at_submit = 0;  // 1-based; 0 never fails
  unsigned max_in_flight = 0;

 private:
  enum class State { kIdle, kFilling, kInFlight };
  struct Copy {
    uint64_t offset = 0;
    uint64_t length = 0;
  };

  void violation(const std::string& what) { violations.push_back(what); }

  unsigned in_flight() const {
    return static_cast<unsigned>(std::count(state_.begin(), state_.end(), State::kInFlight));
  }

  void complete(unsigned k) {
    if (state_[k] != State::kInFlight) return;
    const Copy& c = pending_[k];
    std::memcpy(device.data() + c.offset, staging_[k].data(), c.length);
    for (uint64_t i = c.offset; i < c.offset + c.length; ++i) ++writes[i];
    std::fill(staging_[k].begin(), staging_[k].end(), 0xA5);
    state_[k] = State::kIdle;
  }

  ChunkPlan plan_;
  std::vector<std::vector<uint8_t>> staging_;
  std::vector<State> state_;
  std::vector<Copy> pending_;
};

// A module whose tensors cover what the views must keep: tied parameters,
// views at a storage offset and transposed, several dtypes, a byte buffer of
// an odd size spanning pages, an empty tensor and a 0-dim one.
torch::jit::Module edge_module() {
  torch::jit::Module m("FastLoadEdge");
  at::Tensor big = at::arange(0, 3000, at::kFloat).mul_(0.25).add_(1);
  at::Tensor w = big.narrow(0, 0, 2400).view({40, 60});
  m.register_parameter("w", w, false);
  m.register_parameter("tied", w, false);
  m.register_buffer("mid", big.narrow(0, 2401, 77));
  m.register_buffer("w_t", w.t());
  m.register_buffer("d64", at::arange(0, 513, at::kDouble).mul_(-1.5));
  m.register_buffer("i64", at::arange(7, 7 + 301, at::kLong));
  m.register_buffer("bf16", at::arange(0, 129, at::kFloat).to(at::kBFloat16));
  m.register_buffer("u8", at::arange(0, 3 * 4096 + 123, at::kLong).remainder(251).to(at::kByte));
  m.register_buffer("empty", at::zeros({0, 3}));
  m.register_buffer("scalar", at::full({}, 2.5));
  m.define(
      "def forward(self, x):\n"
      "  return torch.matmul(x, self.w) + self.mid.sum() + self.d64.sum().float() + self.scalar\n");
  return m;
}

struct Packed {
  test::TempDir dir;
  std::string blob;
};

std::unique_ptr<Packed> pack_edge_module() {
  auto p = std::make_unique<Packed>();
  PackOptions o;
  o.store_dir = p->dir.path();
  p->blob = ModelWrapper::from_model(edge_module(), o).blob_path();
  return p;
}

// Every shareable tensor of a module with its path, in the packer's order.
std::vector<std::pair<std::string, at::Tensor>> tensors_of(const torch::jit::Module& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  internal::rewrite_tensors(m, [&](const std::string& path, format::TensorKind, const at::Tensor& t) {
    out.emplace_back(path, t);
    return t;
  });
  return out;
}

const void* storage_ptr(const at::Tensor& t) { return t.storage().data_ptr().get(); }

// Same dtype, sizes, strides, storage offset and bytes; `b` may be on a GPU.
void check_same_tensor(const std::string& path, const at::Tensor& a, const at::Tensor& b) {
  CAPTURE(path);
  CHECK((a.scalar_type() == b.scalar_type()));
  CHECK((a.sizes() == b.sizes()));
  CHECK((a.strides() == b.strides()));
  CHECK(a.storage_offset() == b.storage_offset());
  CHECK(a.storage().nbytes() == b.storage().nbytes());
  std::string why;
  CHECK_MESSAGE(test::bit_equal(a, b.cpu(), &why), why);
}

// Which tensors share a storage must not change.
void check_same_aliasing(const std::vector<std::pair<std::string, at::Tensor>>& a,
                         const std::vector<std::pair<std::string, at::Tensor>>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    for (size_t j = i + 1; j < a.size(); ++j) {
      if (a[i].second.storage().nbytes() == 0) continue;
      CAPTURE(a[i].first);
      CAPTURE(a[j].first);
      CHECK((storage_ptr(a[i].second) == storage_ptr(a[j].second)) ==
            (storage_ptr(b[i].second) == storage_ptr(b[j].second)));
    }
  }
}

// --- GPU helpers ---

bool cuda_present() {
  static const bool present = [] {
    try {
      return internal::load_cuda_backend() && torch::cuda::is_available();
    } catch (const std::exception&) {
      return false;
    }
  }();
  return present;
}

// A GPU, and this zcwrap's CUDA loader built (-Dcuda) to use it.
bool gpu_fast_load() { return cuda_present() && internal::fast_load_built(); }

// The GPU cases compare with float32 on the CPU: no TF32 shortcuts.
void strict_float32() {
  at::globalContext().setAllowTF32CuBLAS(false);
  at::globalContext().setAllowTF32CuDNN(false);
}

// Outputs within a model's normal float tolerance (integers and bools equal).
bool close(const c10::IValue& a, const c10::IValue& b, std::string* why, const std::string& at = "result") {
  if (a.isTensor() && b.isTensor()) {
    const at::Tensor x = a.toTensor().cpu();
    const at::Tensor y = b.toTensor().cpu();
    if (x.scalar_type() != y.scalar_type() || x.sizes() != y.sizes()) {
      *why = at + ": dtype or shape differs";
      return false;
    }
    const bool ok = at::isFloatingType(x.scalar_type()) || at::isComplexType(x.scalar_type())
                        ? at::allclose(x, y, 1e-3, 1e-4, /*equal_nan=*/true)
                        : at::equal(x, y);
    if (!ok) *why = at + ": values differ beyond rtol 1e-3, atol 1e-4";
    return ok;
  }
  if (a.isTuple() && b.isTuple()) {
    const auto& x = a.toTupleRef().elements();
    const auto& y = b.toTupleRef().elements();
    if (x.size() != y.size()) return *why = at + ": tuple sizes differ", false;
    for (size_t i = 0; i < x.size(); ++i) {
      if (!close(x[i], y[i], why, at + "[" + std::to_string(i) + "]")) return false;
    }
    return true;
  }
  if (a.isList() && b.isList()) {
    return close(c10::ivalue::Tuple::create(a.toList().vec()), c10::ivalue::Tuple::create(b.toList().vec()), why,
                 at);
  }
  if (a == b) return true;
  *why = at + ": values differ";
  return false;
}

std::vector<c10::IValue> inputs_on(const std::string& input_path, const c10::Device& device) {
  std::vector<c10::IValue> inputs = test::load_inputs(input_path);
  for (c10::IValue& v : inputs) {
    if (v.isTensor()) v = v.toTensor().to(device);
  }
  return inputs;
}

}  // namespace

// --- chunk planning ---

TEST_CASE("plan_chunks: cases") {
  struct Case {
    const char* name;
    uint64_t length;
    uint64_t chunk_bytes;
    unsigned buffers;
    uint64_t want_buffer_bytes;
    size_t want_chunks;
    unsigned want_buffers;
  };
  const Case cases[] = {
      {"EMPTY", 0, 8 * kPage, 4, 0, 0, 0},
      {"ONE_BYTE", 1, 8 * kPage, 4, kPage, 1, 1},
      {"PAGE_MINUS_ONE", kPage - 1, 8 * kPage, 4, kPage, 1, 1},
      {"EXACTLY_ONE_CHUNK", 8 * kPage, 8 * kPage, 4, 8 * kPage, 1, 1},
      {"ONE_CHUNK_PLUS_ONE", 8 * kPage + 1, 8 * kPage, 4, 8 * kPage, 2, 2},
      {"SHORTER_THAN_A_CHUNK", 3 * kPage + 17, 8 * kPage, 4, 4 * kPage, 1, 1},
      {"MANY_CHUNKS_ODD_TAIL", 37 * 8 * kPage + 1234, 8 * kPage, 4, 8 * kPage, 38, 4},
      {"CHUNK_NOT_PAGE_MULTIPLE", 10 * kPage, 3 * kPage + 100, 2, 3 * kPage, 4, 2},
      {"CHUNK_BELOW_A_PAGE", 3 * kPage, 100, 2, kPage, 3, 2},
      {"ZERO_BUFFERS_MEANS_ONE", 5 * kPage, kPage, 0, kPage, 5, 1},
      {"MORE_BUFFERS_THAN_CHUNKS", 3 * kPage, kPage, 16, kPage, 3, 3},
      {"HUGE_SECTION", 8ull << 30, 32ull << 20, 4, 32ull << 20, 256, 4},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const ChunkPlan plan = internal::plan_chunks(c.length, options(c.chunk_bytes, c.buffers, 1));
    CHECK(plan.buffer_bytes == c.want_buffer_bytes);
    CHECK(plan.chunks.size() == c.want_chunks);
    CHECK(plan.buffers == c.want_buffers);
    // The chunks tile [0, length) in order, page-aligned, each fits a buffer.
    uint64_t next = 0;
    for (size_t i = 0; i < plan.chunks.size(); ++i) {
      const internal::Chunk& chunk = plan.chunks[i];
      CAPTURE(i);
      CHECK(chunk.offset == next);
      CHECK(chunk.offset % kPage == 0);
      CHECK(chunk.length > 0);
      CHECK(chunk.length <= plan.buffer_bytes);
      CHECK(chunk.buffer == i % plan.buffers);
      next = chunk.offset + chunk.length;
    }
    CHECK(next == c.length);
    CHECK(plan.buffer_bytes % kPage == 0);
  }
}

TEST_CASE("plan_chunks: the default options give 32 MiB chunks through 4 buffers") {
  const ChunkPlan plan = internal::plan_chunks(1ull << 30, FastLoadOptions{});
  CHECK(plan.buffer_bytes == (32ull << 20));
  CHECK(plan.buffers == 4);
  CHECK(plan.chunks.size() == 32);
  CHECK(internal::fill_threads(FastLoadOptions{}) >= 1);
  CHECK(internal::fill_threads(FastLoadOptions{}) <= internal::kMaxDefaultFillThreads);
  CHECK(internal::fill_threads(options(kPage, 1, 3)) == 3);
}

// --- FillPool ---

TEST_CASE("FillPool runs every task exactly once, batch after batch") {
  for (unsigned threads : {0u, 1u, 2u, 5u}) {
    CAPTURE(threads);
    FillPool pool(threads);
    CHECK(pool.size() == std::max(threads, 1u));
    for (size_t count : {size_t(0), size_t(1), size_t(3), size_t(100)}) {
      std::vector<std::atomic<int>> runs(count);
      pool.run(count, [&](size_t i) { runs[i].fetch_add(1); });
      for (size_t i = 0; i < count; ++i) CHECK(runs[i].load() == 1);
    }
  }
}

TEST_CASE("FillPool rethrows a task's error and stays usable") {
  auto failing = [](std::atomic<int>& ran) {
    return [&ran](size_t i) {
      ran.fetch_add(1);
      if (i == 10) throw std::runtime_error("task 10 failed");
    };
  };
  {
    // The calling thread alone takes the tasks in order, so exactly the ones
    // after the failure are skipped. (With more threads how many others
    // started first depends on scheduling.)
    FillPool serial(1);
    std::atomic<int> ran{0};
    CHECK_THROWS_WITH_AS(serial.run(1000, failing(ran)), "task 10 failed", std::runtime_error);
    CHECK(ran.load() == 11);
  }
  FillPool pool(4);
  std::atomic<int> ran{0};
  CHECK_THROWS_WITH_AS(pool.run(1000, failing(ran)), "task 10 failed", std::runtime_error);
  CHECK(ran.load() >= 11);
  std::atomic<int> again{0};
  pool.run(50, [&](size_t) { again.fetch_add(1); });
  CHECK(again.load() == 50);
}

// --- the staging pipeline ---

TEST_CASE("stream_chunks: every byte arrives once, buffers are never refilled in flight") {
  struct Case {
    const char* name;
    uint64_t length;
    uint64_t chunk_bytes;
    unsigned buffers;
    unsigned threads;
  };
  const uint64_t piece = internal::kFillPieceBytes;
  const Case cases[] = {
      {"EMPTY", 0, 4 * kPage, 4, 4},
      {"ONE_BYTE", 1, 4 * kPage, 4, 4},
      {"PAGE_PLUS_ONE", kPage + 1, 4 * kPage, 4, 2},
      {"EXACTLY_ONE_CHUNK", 4 * kPage, 4 * kPage, 4, 3},
      {"ONE_BUFFER_MANY_CHUNKS", 23 * kPage + 99, 2 * kPage, 1, 2},
      {"TWO_BUFFERS_ODD_TAIL", 41 * kPage + 4095, 3 * kPage, 2, 4},
      {"FOUR_BUFFERS_ONE_THREAD", 64 * kPage + 1, 4 * kPage, 4, 1},
      {"MANY_BUFFERS_FEW_CHUNKS", 2 * kPage + 5, kPage, 16, 3},
      {"CHUNKS_OF_SEVERAL_PIECES", 3 * piece + 12345, 2 * piece + kPage, 3, 4},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const std::vector<uint8_t> source = random_bytes(c.length, static_cast<uint32_t>(c.length));
    const ChunkPlan plan = internal::plan_chunks(c.length, options(c.chunk_bytes, c.buffers, c.threads));
    FakeCopier copier(plan, c.length);
    FillPool pool(c.threads);
    internal::stream_chunks(source.data(), plan, copier, pool);
    for (const std::string& v : copier.violations) FAIL_CHECK(v);
    CHECK(copier.device == source);
    CHECK(std::all_of(copier.writes.begin(), copier.writes.end(), [](uint8_t n) { return n == 1; }));
    CHECK(copier.submits == plan.chunks.size());
    CHECK(copier.waits == plan.chunks.size());
    CHECK(copier.finishes == 1);
    CHECK(copier.max_in_flight <= plan.buffers);
    // With more than one buffer, copies really overlap the next fill.
    if (plan.buffers > 1 && plan.chunks.size() > plan.buffers) CHECK(copier.max_in_flight == plan.buffers);
  }
}

TEST_CASE("the fake copier catches a buffer refilled before its copy completed") {
  const ChunkPlan plan = internal::plan_chunks(2 * kPage, options(kPage, 1, 1));
  std::vector<uint8_t> source = random_bytes(2 * kPage, 7);
  FakeCopier copier(plan, 2 * kPage);
  // What a pipeline that forgot wait() would do.
  std::memcpy(copier.buffer(0), source.data(), kPage);
  copier.submit(0, 0, kPage);
  std::memcpy(copier.buffer(0), source.data() + kPage, kPage);
  copier.submit(0, kPage, kPage);
  copier.finish();
  CHECK_FALSE(copier.violations.empty());
  CHECK(copier.device != source);
}

TEST_CASE("stream_chunks passes a copy error on") {
  const uint64_t length = 10 * kPage + 3;
  const std::vector<uint8_t> source = random_bytes(length, 3);
  const ChunkPlan plan = internal::plan_chunks(length, options(kPage, 3, 2));
  FakeCopier copier(plan, length);
  copier.fail_at_submit = 4;
  FillPool pool(2);
  CHECK_THROWS_WITH_AS(internal::stream_chunks(source.data(), plan, copier, pool), "fake copy failure", Error);
  CHECK(copier.finishes == 0);
  for (const std::string& v : copier.violations) FAIL_CHECK(v);
}

// --- views of one buffer ---

TEST_CASE("storage_views: views of one buffer keep dtype, sizes, strides, offsets and aliasing") {
  auto packed = pack_edge_module();
  auto blob = BlobFile::open(packed->blob);
  const format::Manifest& manifest = blob->manifest();
  const uint64_t length = blob->header().data_length;
  // A copy of the data section in one CPU allocation stands in for the
  // device buffer: the views do not care where the owner lives.
  at::Tensor owner = at::empty({int64_t(length)}, at::kByte);
  std::memcpy(owner.data_ptr(), blob->data_section(), length);
  const auto* base = static_cast<const uint8_t*>(owner.data_ptr());
  std::vector<c10::Storage> views = internal::storage_views(owner.storage(), manifest.storages, packed->blob);
  REQUIRE(views.size() == manifest.storages.size());
  for (size_t i = 0; i < views.size(); ++i) {
    CAPTURE(i);
    const format::StorageEntry& s = manifest.storages[i];
    CHECK(views[i].nbytes() == s.nbytes);
    CHECK((views[i].device() == owner.device()));
    if (s.nbytes == 0) continue;
    const auto* p = static_cast<const uint8_t*>(views[i].data_ptr().get());
    CHECK(p == base + s.offset);
    CHECK((p - base) % format::storage_alignment(s.nbytes, manifest.alignment) == 0);
  }

  // Bound as unwrap binds them, the tensors equal the zero-copy unwrap's.
  Unwrapped cpu = ModelWrapper::open(packed->blob).unwrap("cpu");
  const auto reference = tensors_of(cpu.module());
  const std::vector<format::TensorEntry>& entries = manifest.models.at(0).tensors;
  REQUIRE(entries.size() == reference.size());
  std::vector<std::pair<std::string, at::Tensor>> bound;
  for (size_t i = 0; i < entries.size(); ++i) {
    const format::TensorEntry& t = entries[i];
    CHECK(t.path == reference[i].first);
    bound.emplace_back(t.path, at::empty({0}, at::TensorOptions().dtype(internal::dtype_from_name(t.dtype)))
                                   .set_(views[t.storage], int64_t(t.storage_offset), t.sizes, t.strides));
    check_same_tensor(t.path, reference[i].second, bound.back().second);
  }
  check_same_aliasing(reference, bound);

  // The views keep the buffer alive on their own.
  const std::vector<uint8_t> expected(blob->data_section(), blob->data_section() + length);
  const std::vector<format::StorageEntry> storages = manifest.storages;
  owner = at::Tensor();
  blob.reset();
  for (size_t i = 0; i < views.size(); ++i) {
    if (storages[i].nbytes == 0) continue;
    CHECK(std::memcmp(views[i].data_ptr().get(), expected.data() + storages[i].offset, storages[i].nbytes) == 0);
  }
}

TEST_CASE("storage_views: a storage outside the buffer is a bad blob") {
  at::Tensor owner = at::empty({int64_t(2 * kPage)}, at::kByte);
  std::vector<format::StorageEntry> storages(2);
  storages[0].offset = 0;
  storages[0].nbytes = kPage;
  storages[1].offset = kPage;
  storages[1].nbytes = kPage + 1;
  try {
    internal::storage_views(owner.storage(), storages, "x.zcb");
    FAIL("expected Error(kBadBlob)");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kBadBlob);
    CHECK(std::string(e.what()).find("x.zcb: storage 1 (offset 4096, 4097 bytes)") == 0);
  }
}

TEST_CASE("use_fast_load on cpu is the zero-copy path") {
  auto packed = pack_edge_module();
  Unwrapped u = ModelWrapper::open(packed->blob).unwrap("cpu", /*use_fast_load=*/true);
  for (const auto& [path, t] : tensors_of(u.module())) {
    CAPTURE(path);
    if (t.storage().nbytes() > 0) CHECK(test::points_into(t, u));
  }
}

TEST_CASE("use_fast_load on a LibTorch without CUDA is a device error" * doctest::skip(internal::load_cuda_backend())) {
  auto packed = pack_edge_module();
  try {
    ModelWrapper::open(packed->blob).unwrap("cuda:0", /*use_fast_load=*/true);
    FAIL("expected Error(kDevice)");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kDevice);
    CHECK(std::string(e.what()).find("no CUDA support") != std::string::npos);
  }
}

// --- on a GPU ---
// Each case below is skipped (doctest's skip decorator, counted in the
// suite's closing line and by scripts/test.sh) where there is no CUDA device,
// or, for the fast-load cases, where zcwrap was built without -Dcuda. On a
// GPU machine, scripts/gpu-check.sh builds and runs them.

TEST_CASE("GPU: fast_load_storages puts the data section on the device byte for byte" *
          doctest::skip(!gpu_fast_load())) {
  auto packed = pack_edge_module();
  auto blob = BlobFile::open(packed->blob);
  const format::Manifest& manifest = blob->manifest();
  const c10::Device device("cuda:0");
  for (const FastLoadOptions& o : {FastLoadOptions{}, options(kPage, 1, 1), options(kPage, 3, 4),
                                   options(2 * kPage + 1, 2, 16)}) {
    CAPTURE(o.chunk_bytes);
    CAPTURE(o.buffers);
    CAPTURE(o.threads);
    std::vector<c10::Storage> storages = internal::fast_load_storages(*blob, device, o);
    REQUIRE(storages.size() == manifest.storages.size());
    const auto* first = static_cast<const uint8_t*>(storages[0].data_ptr().get());
    for (size_t i = 0; i < storages.size(); ++i) {
      CAPTURE(i);
      const format::StorageEntry& s = manifest.storages[i];
      CHECK((storages[i].device() == device));
      CHECK(storages[i].nbytes() == s.nbytes);
      if (s.nbytes == 0) continue;
      // All views of one allocation, at the packed offsets.
      const auto* p = static_cast<const uint8_t*>(storages[i].data_ptr().get());
      CHECK(p - first == int64_t(s.offset) - int64_t(manifest.storages[0].offset));
      at::Tensor bytes = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(device))
                             .set_(storages[i], 0, {int64_t(s.nbytes)}, {1})
                             .cpu();
      CHECK(std::memcmp(bytes.data_ptr(), blob->storage_data(i), s.nbytes) == 0);
    }
  }
}

TEST_CASE("GPU: fast load keeps every tensor's dtype, sizes, strides, offset and aliasing" *
          doctest::skip(!cuda_present())) {
  auto packed = pack_edge_module();
  const ModelWrapper wrapper = ModelWrapper::open(packed->blob);
  Unwrapped cpu = wrapper.unwrap("cpu");
  const auto reference = tensors_of(cpu.module());
  for (bool fast : {false, true}) {
    CAPTURE(fast);
    Unwrapped gpu = wrapper.unwrap("cuda:0", fast);
    const auto got = tensors_of(gpu.module());
    REQUIRE(got.size() == reference.size());
    for (size_t i = 0; i < got.size(); ++i) {
      CHECK((got[i].second.device() == c10::Device("cuda:0")));
      check_same_tensor(got[i].first, reference[i].second, got[i].second);
    }
    check_same_aliasing(reference, got);
    torch::NoGradGuard no_grad;
    at::Tensor x = at::linspace(-1, 1, 2 * 40, at::kFloat).reshape({2, 40});
    std::string why;
    CHECK_MESSAGE(close(gpu.module().forward({x.cuda()}), cpu.module().forward({x}), &why), why);
  }
}

TEST_CASE("GPU: fixtures unwrapped on cuda:0 give the outputs of torch::jit::load" *
          doctest::skip(!cuda_present())) {
  strict_float32();
  const c10::Device device("cuda:0");
  std::map<std::string, std::string> blobs;  // model file -> blob
  test::TempDir dir;
  for (const auto& m : test::fixtures_index()["models"]) {
    const std::string name = m["name"].get<std::string>();
    std::string file = m["file"].get<std::string>();
    const std::string method = m["method"].get<std::string>();
    CAPTURE(name);
    // The index lists only the fixtures this lane made: a missing one is a bug.
    REQUIRE_MESSAGE(test::file_exists(test::fixture(file)), "fixture " << file << " is listed but missing");
    std::string model_name = "model";
    if (m.contains("pipeline")) {
      // Both models of the pipeline in one blob, so the tensor they share
      // must stay shared on the device.
      const std::string& key = m["pipeline"].get<std::string>();
      if (!blobs.count(key)) {
        blobs[key] = dir / (key + ".zcb");
        ModelWrapper::pack_files({{"pipeline_a", test::fixture("pipeline_a.pt")},
                                  {"pipeline_b", test::fixture("pipeline_b.pt")}}, Layout::kPipeline, blobs[key]);
      }
      file = key;
      model_name = name;
    } else if (!blobs.count(file)) {
      blobs[file] = dir / (name + ".zcb");
      ModelWrapper::pack_files({{"model", test::fixture(file)}}, Layout::kStandalone, blobs[file]);
    }
    const std::string reference_file = test::fixture(m["file"].get<std::string>());
    const c10::IValue reference =
        test::reference_output(reference_file, method, test::fixture(m["input"].get<std::string>()));
    const ModelWrapper wrapper = ModelWrapper::open(blobs[file]);
    Unwrapped plain = wrapper.unwrap("cuda:0", false);
    Unwrapped fast = wrapper.unwrap("cuda:0", true);
    const c10::IValue out_plain = test::call(plain.at(model_name), method,
                                             inputs_on(test::fixture(m["input"].get<std::string>()), device));
    const c10::IValue out_fast = test::call(fast.at(model_name), method,
                                            inputs_on(test::fixture(m["input"].get<std::string>()), device));
    std::string why;
    CHECK_MESSAGE(test::bit_equal(out_fast, out_plain, &why), "fast vs plain: " << why);
    CHECK_MESSAGE(close(out_fast, reference, &why), "fast vs torch::jit::load on the CPU: " << why);
    if (m.contains("pipeline") && name == "pipeline_a") {
      CHECK(storage_ptr(fast.at("pipeline_a").attr("emb").toModule().attr("weight").toTensor()) ==
            storage_ptr(fast.at("pipeline_b").attr("proj").toModule().attr("weight").toTensor()));
    }
  }
}

TEST_CASE("GPU: \"cuda\" without an index loads onto the current device" * doctest::skip(!gpu_fast_load())) {
  auto packed = pack_edge_module();
  auto blob = BlobFile::open(packed->blob);
  std::vector<c10::Storage> storages = internal::fast_load_storages(*blob, c10::Device("cuda"));
  REQUIRE_FALSE(storages.empty());
  CHECK(storages[0].device().is_cuda());
  CHECK(storages[0].device().has_index());
}

TEST_CASE("GPU: each worker picks its own cuda:N" *
          doctest::skip(!cuda_present() || torch::cuda::device_count() < 2)) {
  const int count = static_cast<int>(torch::cuda::device_count());
  auto packed = pack_edge_module();
  Unwrapped u = ModelWrapper::open(packed->blob).unwrap("cuda:" + std::to_string(count - 1), true);
  for (const auto& [path, t] : tensors_of(u.module())) {
    CAPTURE(path);
    CHECK((t.device() == c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(count - 1))));
  }
}
