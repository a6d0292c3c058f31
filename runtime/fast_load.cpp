#include "fast_load.hpp"

#include <algorithm>
#include <cstring>

namespace zcwrap::detail {

unsigned fill_threads(const FastLoadOptions& options) {
  if (options.threads != 0) return options.threads;
  return std::clamp(std::thread::hardware_concurrency(), 1u, kMaxDefaultFillThreads);
}

ChunkPlan plan_chunks(uint64_t length, const FastLoadOptions& options, uint64_t page) {
  ChunkPlan plan;
  if (length == 0) return plan;
  uint64_t chunk = std::max(options.chunk_bytes / page * page, page);
  // A section shorter than one chunk needs a buffer only as large as itself
  // (rounded up to a page, which cannot wrap as length < chunk).
  if (length < chunk) chunk = (length + page - 1) / page * page;
  const uint64_t count = (length - 1) / chunk + 1;
  plan.buffer_bytes = chunk;
  plan.buffers = static_cast<unsigned>(std::min<uint64_t>(std::max(options.buffers, 1u), count));
  plan.chunks.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t offset = i * chunk;
    plan.chunks.push_back({offset, std::min(chunk, length - offset), static_cast<unsigned>(i % plan.buffers)});
  }
  return plan;
}

// --- FillPool ---

FillPool::FillPool(unsigned threads) {
  for (unsigned i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

FillPool::~FillPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void FillPool::take_tasks() {
  for (;;) {
    size_t index;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (next_ >= count_) return;
      index = next_++;
    }
    try {
      (*task_)(index);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      next_ = count_;  // skip what has not started
    }
  }
}

void FillPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    take_tasks();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --running_;
    }
    done_.notify_one();
  }
}

void FillPool::run(size_t count, const std::function<void(size_t)>& task) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = &task;
    count_ = count;
    next_ = 0;
    error_ = nullptr;
    running_ = static_cast<unsigned>(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  take_tasks();
  std::exception_ptr error;
  {
    // Every worker leaves the batch before `task` goes out of scope.
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return running_ == 0; });
    task_ = nullptr;
    error = error_;
  }
  if (error) std::rethrow_exception(error);
}

// --- the pipeline ---

void stream_chunks(const uint8_t* source, const ChunkPlan& plan, Copier& copier, FillPool& pool) {
  for (const Chunk& chunk : plan.chunks) {
    copier.wait(chunk.buffer);
    uint8_t* staging = copier.buffer(chunk.buffer);
    const uint8_t* from = source + chunk.offset;
    const size_t pieces = static_cast<size_t>((chunk.length + kFillPieceBytes - 1) / kFillPieceBytes);
    pool.run(pieces, [&](size_t piece) {
      const uint64_t offset = piece * kFillPieceBytes;
      std::memcpy(staging + offset, from + offset, std::min(kFillPieceBytes, chunk.length - offset));
    });
    copier.submit(chunk.buffer, chunk.offset, chunk.length);
  }
  copier.finish();
}

}  // namespace zcwrap::detail
