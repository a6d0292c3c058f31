// Fast load: streaming a blob's data section to a device through a few
// pinned staging buffers. Internal; torch-free and device-free.
//
// The data section is cut into page-aligned chunks (plan_chunks). For each
// chunk in order, stream_chunks waits until its staging buffer's previous
// copy has completed, fills the buffer from the mapping on several host
// threads (so the page faults of the mapping are taken in parallel), and
// submits an asynchronous copy of the buffer to the same offset of one
// device allocation. While one buffer fills, the copies of the others run.
//
// The device side is a Copier: runtime/cuda_loader.cpp has the CUDA one
// (pinned buffers, one stream and event per buffer); tests drive the same
// pipeline with a fake that copies into host memory and checks the order.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "format.hpp"

namespace zcwrap::detail {

// Tuning of the fast path. The defaults suit a PCIe 4/5 GPU with the blob in
// the page cache.
struct FastLoadOptions {
  // Bytes per chunk, which is also the size of each staging buffer: rounded
  // down to a multiple of the page size, and at least one page.
  uint64_t chunk_bytes = 32ull << 20;
  // Staging buffers (and copies) in flight; 0 counts as 1.
  unsigned buffers = 4;
  // Host threads that fill a staging buffer, the calling thread included;
  // 0 means min(cores, kMaxDefaultFillThreads).
  unsigned threads = 0;
};

inline constexpr unsigned kMaxDefaultFillThreads = 8;
// Bytes one fill task copies: large enough to amortize the hand-off, small
// enough to spread a chunk over all fill threads.
inline constexpr uint64_t kFillPieceBytes = 2ull << 20;

// The threads a load with `options` uses, the calling thread included (>= 1).
unsigned fill_threads(const FastLoadOptions& options);

struct Chunk {
  uint64_t offset = 0;  // in the data section, and in the device allocation
  uint64_t length = 0;  // 1 .. ChunkPlan::buffer_bytes
  unsigned buffer = 0;  // staging buffer it goes through: chunk index % buffers
};

struct ChunkPlan {
  uint64_t buffer_bytes = 0;  // size of each staging buffer, a multiple of `page`
  unsigned buffers = 0;       // staging buffers needed: never more than chunks
  std::vector<Chunk> chunks;  // in increasing offset, covering [0, length) once
};

// Splits [0, length) into chunks of at most `options.chunk_bytes` (see
// FastLoadOptions), each starting on a multiple of `page` (a power of two).
// A short section gets one buffer no larger than the section rounded up to a
// page; an empty one gets no chunks and no buffers.
ChunkPlan plan_chunks(uint64_t length, const FastLoadOptions& options, uint64_t page = format::kPageSize);

// The device side of the pipeline. stream_chunks calls it from one thread
// only, in this order per chunk: wait(k), buffer(k) (then fills it),
// submit(k, ...); and finish() once at the end.
class Copier {
 public:
  virtual ~Copier() = default;
  // Host memory of staging buffer `k` (< plan.buffers), plan.buffer_bytes
  // long. Only written between wait(k) and the next submit(k).
  virtual uint8_t* buffer(unsigned k) = 0;
  // Starts copying the first `length` bytes of buffer `k` to `device_offset`
  // of the destination; may return before the copy is done.
  virtual void submit(unsigned k, uint64_t device_offset, uint64_t length) = 0;
  // Returns once the last copy submitted from buffer `k` has completed (at
  // once when there is none), so the buffer may be refilled.
  virtual void wait(unsigned k) = 0;
  // Returns once every copy has completed; copy errors surface here at the
  // latest. An implementation must also wait for its copies in flight when
  // destroyed without finish() (the pipeline was interrupted by an error).
  virtual void finish() = 0;
};

// A fixed set of threads that run the tasks of one batch together with the
// calling thread. Used from one thread at a time.
class FillPool {
 public:
  // `threads` in all, the calling thread included (0 counts as 1).
  explicit FillPool(unsigned threads);
  ~FillPool();
  FillPool(const FillPool&) = delete;
  FillPool& operator=(const FillPool&) = delete;

  unsigned size() const { return static_cast<unsigned>(workers_.size()) + 1; }

  // Runs task(0) .. task(count - 1), each once, spread over the threads;
  // returns when all are done. When a task throws, the tasks not yet started
  // are skipped and the first exception is rethrown here.
  void run(size_t count, const std::function<void(size_t)>& task);

 private:
  void worker_loop();
  void take_tasks();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  uint64_t generation_ = 0;  // bumped for each batch
  bool stop_ = false;
  const std::function<void(size_t)>* task_ = nullptr;
  size_t count_ = 0;
  size_t next_ = 0;      // next task to hand out
  unsigned running_ = 0;  // workers still in the current batch
  std::exception_ptr error_;
};

// Copies `source[0, total)` (total: the end of the last chunk) to the device
// through `copier`, following `plan`, filling each staging buffer on `pool`.
// Returns after copier.finish(). Rethrows the first error of a fill task or
// of the copier; the copier's destructor then waits for the copies in flight.
void stream_chunks(const uint8_t* source, const ChunkPlan& plan, Copier& copier, FillPool& pool);

}  // namespace zcwrap::detail
