// The CUDA side of fast load (built with meson -Dcuda against a CUDA
// LibTorch): pinned staging buffers, one stream and event per buffer, and one
// device allocation from LibTorch's caching allocator that every storage is a
// view of. Only the CUDA runtime API and LibTorch calls that exist from 1.13
// to 2.x are used.
#include <cuda_runtime_api.h>

#include <algorithm>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include "placement.hpp"
#include "torch_util.hpp"
#include "messages.hpp"
#include "zcwrap/error.hpp"

namespace zcwrap::detail {
namespace {

// Throws Error(kDevice): "<where>: cudaMemcpyAsync failed: cudaErrorX: text".
void check(cudaError_t status, const char* call, const std::string& where) {
  if (status == cudaSuccess) return;
  throw Error(ErrorCode::kDevice, where + ": " + call + " failed: " + cudaGetErrorName(status) + ": " +
                                      cudaGetErrorString(status));
}

// Makes `index` the calling thread's current device until destroyed. CUDA
// streams and events belong to the device current when they are created.
class DeviceScope {
 public:
  DeviceScope(int index, const std::string& where) {
    check(cudaGetDevice(&previous_), "cudaGetDevice", where);
    if (previous_ != index) check(cudaSetDevice(index), "cudaSetDevice", where);
  }
  ~DeviceScope() { cudaSetDevice(previous_); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
};

class Stream {
 public:
  explicit Stream(const std::string& where) {
    // Non-blocking: the copies do not wait for, nor hold up, the legacy
    // default stream; ordering with LibTorch's current stream is explicit.
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags", where);
  }
  Stream(Stream&& other) noexcept : stream_(other.stream_) { other.stream_ = nullptr; }
  Stream& operator=(Stream&&) = delete;
  ~Stream() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class Event {
 public:
  explicit Event(const std::string& where) {
    check(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), "cudaEventCreateWithFlags", where);
  }
  Event(Event&& other) noexcept : event_(other.event_) { other.event_ = nullptr; }
  Event& operator=(Event&&) = delete;
  ~Event() {
    if (event_ != nullptr) cudaEventDestroy(event_);
  }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

class CudaCopier final : public Copier {
 public:
  // Copies go to `device_base` (plan.chunks' offsets are relative to it) on
  // the calling thread's current device; they start only after the work
  // queued so far on `after` (LibTorch's current stream, on which the
  // caching allocator handed out `device_base`).
  CudaCopier(const ChunkPlan& plan, uint8_t* device_base, cudaStream_t after, const std::string& where)
      : where_(where), device_base_(device_base), pending_(plan.buffers, false) {
    Event ready(where);
    check(cudaEventRecord(ready.get(), after), "cudaEventRecord", where);
    for (unsigned k = 0; k < plan.buffers; ++k) {
      // LibTorch's pinned allocator caches the buffers: a second unwrap in
      // this process does not pin memory again.
      staging_.push_back(at::empty({static_cast<int64_t>(plan.buffer_bytes)},
                                   at::TensorOptions().dtype(at::kByte).pinned_memory(true)));
      streams_.emplace_back(where);
      events_.emplace_back(where);
      check(cudaStreamWaitEvent(streams_.back().get(), ready.get(), 0), "cudaStreamWaitEvent", where);
    }
  }

  // The staging buffers are released after this body: no copy may still be
  // reading them.
  ~CudaCopier() override {
    for (const Stream& s : streams_) cudaStreamSynchronize(s.get());
  }

  uint8_t* buffer(unsigned k) override { return static_cast<uint8_t*>(staging_[k].data_ptr()); }

  void submit(unsigned k, uint64_t device_offset, uint64_t length) override {
    check(cudaMemcpyAsync(device_base_ + device_offset, staging_[k].data_ptr(), length, cudaMemcpyHostToDevice,
                          streams_[k].get()),
          "cudaMemcpyAsync", where_);
    check(cudaEventRecord(events_[k].get(), streams_[k].get()), "cudaEventRecord", where_);
    pending_[k] = true;
  }

  void wait(unsigned k) override {
    if (!pending_[k]) return;
    check(cudaEventSynchronize(events_[k].get()), "cudaEventSynchronize", where_);
    pending_[k] = false;
  }

  void finish() override {
    for (const Stream& s : streams_) check(cudaStreamSynchronize(s.get()), "cudaStreamSynchronize", where_);
    std::fill(pending_.begin(), pending_.end(), false);
  }

 private:
  std::string where_;
  uint8_t* device_base_;
  std::vector<at::Tensor> staging_;  // first member: destroyed last
  std::vector<Stream> streams_;
  std::vector<Event> events_;
  std::vector<bool> pending_;
};

}  // namespace

bool fast_load_built() { return true; }

std::vector<c10::Storage> fast_load_storages(const BlobFile& blob, const c10::Device& device,
                                             const FastLoadOptions& options) {
  std::string where = blob.path() + ": fast load to " + device.str();
  if (!device.is_cuda()) throw Error(ErrorCode::kInternal, where + ": not a CUDA device");
  int index = device.has_index() ? device.index() : -1;
  if (index < 0) check(cudaGetDevice(&index), "cudaGetDevice", where);
  const c10::Device target(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  where = blob.path() + ": fast load to " + target.str();
  DeviceScope scope(index, where);

  const uint64_t length = blob.header().data_length;
  at::Tensor owner;
  try {
    owner = at::empty({static_cast<int64_t>(length)}, at::TensorOptions().dtype(at::kByte).device(target));
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kDevice, where + ": cannot allocate the " + std::to_string(length) +
                                        "-byte data section: " + first_line(e));
  }
  const ChunkPlan plan = plan_chunks(length, options);
  try {
    CudaCopier copier(plan, static_cast<uint8_t*>(owner.data_ptr()),
                      c10::cuda::getCurrentCUDAStream(target.index()).stream(), where);
    FillPool pool(fill_threads(options));
    stream_chunks(blob.data_section(), plan, copier, pool);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    // The pinned staging buffers come from LibTorch, which throws c10::Error.
    throw Error(ErrorCode::kDevice, where + ": " + first_line(e));
  }
  return storage_views(owner.storage(), blob.manifest().storages, blob.path());
}

}  // namespace zcwrap::detail
