// Output tensors recycled through a process-wide pool instead of fresh pages from the OS.
//
// A new (16384, 768) float32 tensor costs about 20 ms of page faults (the OS zeroes every page), several times
// the forward itself. A pooled tensor's memory goes back to the pool when its last reference goes. A request
// takes the smallest free buffer that holds it without wasting more than half, so batches of varying size share
// buffers; the pool keeps at most kPoolBytes of free buffers and, when over, frees its least recently returned
// ones, so sizes no longer asked for go. Small tensors come from at::empty as usual.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

namespace ultrafastbert::fff {

constexpr size_t kPoolMinBytes = size_t{256} << 10;  // smaller tensors come from at::empty, not the pool
constexpr size_t kPoolBytes = size_t{1} << 30;       // most free bytes kept: a 16-layer training step's outputs
constexpr size_t kPoolAlignment = 64;                // buffer alignment and size granule: streaming stores need it

class BufferPool {
 public:
  static BufferPool& instance() {
    static BufferPool* pool = new BufferPool();  // never destroyed: tensors may outlive static destruction
    return *pool;
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    int64_t elements = 1;
    for (const int64_t size : sizes) elements *= size;
    const size_t bytes = static_cast<size_t>(elements) * options.dtype().itemsize();
    if (bytes < kPoolMinBytes) return at::empty(sizes, options);
    const size_t rounded = (bytes + kPoolAlignment - 1) / kPoolAlignment * kPoolAlignment;
    auto [data, capacity] = take(rounded);
    if (data == nullptr) {
      capacity = rounded;
      data = std::aligned_alloc(kPoolAlignment, capacity);
      TORCH_CHECK(data != nullptr, "fff: out of memory allocating ", capacity, " bytes");
    }
    return at::from_blob(data, sizes, [capacity = capacity](void* p) { instance().give(p, capacity); }, options);
  }

 private:
  struct Entry {
    size_t capacity;
    void* data;
    uint64_t returned;  // when it came back: the oldest go first
  };

  std::pair<void*, size_t> take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      const bool fits = it->capacity >= bytes && it->capacity / 2 <= bytes;
      if (fits && (best == free_.end() || it->capacity < best->capacity)) best = it;
    }
    if (best == free_.end()) return {nullptr, 0};
    const std::pair<void*, size_t> found{best->data, best->capacity};
    free_bytes_ -= best->capacity;
    *best = free_.back();
    free_.pop_back();
    return found;
  }

  void give(void* data, size_t capacity) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      free_.push_back({capacity, data, ++clock_});
      free_bytes_ += capacity;
      while (free_bytes_ > kPoolBytes) {
        const auto oldest = std::min_element(free_.begin(), free_.end(),
                                             [](const Entry& a, const Entry& b) { return a.returned < b.returned; });
        free_bytes_ -= oldest->capacity;
        evicted.push_back(oldest->data);
        *oldest = free_.back();
        free_.pop_back();
      }
    }
    for (void* p : evicted) std::free(p);
  }

  std::mutex mutex_;
  std::vector<Entry> free_;  // a few entries: a model asks for a few shapes
  uint64_t clock_ = 0;
  size_t free_bytes_ = 0;
};

// An uninitialised tensor like at::empty(sizes, options), its memory taken from the pool when it is large.
inline at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return BufferPool::instance().empty(sizes, options);
}

}  // namespace ultrafastbert::fff
