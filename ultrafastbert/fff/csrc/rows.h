// Row kernels shared by the forward and the backward: dot products of tokens with weight rows, and weighted
// sums of weight rows into output rows.
//
// Every dot product and every output row is summed in one fixed order whatever the number of tokens computed
// beside it, so a token's result does not depend on which other tokens share its call.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "vec.h"

namespace ultrafastbert::fff {

// Tokens per dot-product pass: 2 accumulators per token plus the loads fit the registers (8 with 32, 4 with 16).
constexpr int kMaxBlock = kVectorRegisters / 4;
// Vectors of output columns kept in registers while weight rows stream through; combine_shared_path holds
// kLeafRunTokens (4) rows of them plus one row of weights.
constexpr int kChunkVectors = kVectorRegisters >= 32 ? 4 : 2;
constexpr int64_t kChunk = kChunkVectors * kLanes;

// z[b] = x[b] . w for B tokens sharing the weight row w, which is loaded once for all of them. Two
// accumulator chains per token and one fixed reduction order, whatever B, so a token's logit does not depend
// on the tokens computed beside it.
template <int B, typename X, typename W>
inline void dot_block(const X* const* x, const W* w, int64_t width, float* z) {
  vfloat even[B];
  vfloat odd[B];
  for (int b = 0; b < B; ++b) even[b] = odd[b] = vfloat{};
  int64_t h = 0;
  for (; h + 2 * kLanes <= width; h += 2 * kLanes) {
    const vfloat w0 = load(w + h);
    const vfloat w1 = load(w + h + kLanes);
    for (int b = 0; b < B; ++b) {
      even[b] += load(x[b] + h) * w0;
      odd[b] += load(x[b] + h + kLanes) * w1;
    }
  }
  if (h + kLanes <= width) {
    const vfloat w0 = load(w + h);
    for (int b = 0; b < B; ++b) even[b] += load(x[b] + h) * w0;
    h += kLanes;
  }
  for (int b = 0; b < B; ++b) {
    float s = horizontal_sum(even[b] + odd[b]);
    for (int64_t i = h; i < width; ++i) s += to_float(x[b][i]) * to_float(w[i]);
    z[b] = s;
  }
}

// z[b] = x[b] . w[b] for B tokens each on its own row: the same summation order as dot_block, with the B
// rows' loads interleaved so that their cache misses overlap.
template <int B, typename X, typename W>
inline void dot_own_rows(const X* const* x, const W* const* w, int64_t width, float* z) {
  vfloat even[B];
  vfloat odd[B];
  for (int b = 0; b < B; ++b) even[b] = odd[b] = vfloat{};
  int64_t h = 0;
  for (; h + 2 * kLanes <= width; h += 2 * kLanes) {
    for (int b = 0; b < B; ++b) {
      even[b] += load(x[b] + h) * load(w[b] + h);
      odd[b] += load(x[b] + h + kLanes) * load(w[b] + h + kLanes);
    }
  }
  if (h + kLanes <= width) {
    for (int b = 0; b < B; ++b) even[b] += load(x[b] + h) * load(w[b] + h);
    h += kLanes;
  }
  for (int b = 0; b < B; ++b) {
    float s = horizontal_sum(even[b] + odd[b]);
    for (int64_t i = h; i < width; ++i) s += to_float(x[b][i]) * to_float(w[b][i]);
    z[b] = s;
  }
}

constexpr int64_t kLineBytes = 64;    // one cache line
constexpr int64_t kPageBytes = 4096;  // one base page: the unit of a TLB entry and of the hardware prefetchers

// Software prefetch of the line holding p (into every cache level).
inline void prefetch_line(const void* p) { __builtin_prefetch(p, 0, 3); }

// Prefetches the first two lines of every page of row [p, p + bytes) and its last line: enough to start the
// hardware prefetchers and the page walks of the whole row at once, at a few dozen instructions.
inline void prefetch_page_heads(const void* p, int64_t bytes) {
  const char* row = static_cast<const char*>(p);
  for (int64_t offset = 0; offset < bytes; offset += kPageBytes) {
    prefetch_line(row + offset);
    prefetch_line(row + offset + kLineBytes);
  }
  prefetch_line(row + bytes - 1);
}

// x . w, summed as dot_block<1> sums it (bit for bit), while the lines of the P rows `ahead` are prefetched at
// the pace the loop reads w: the rows that may be needed next arrive while this one is being read.
template <int P, typename X, typename W>
inline float dot_fetching_ahead(const X* x, const W* w, int64_t width, const W* const* ahead) {
  constexpr int64_t step = 2 * kLanes;
  constexpr int64_t step_bytes = step * static_cast<int64_t>(sizeof(W));
  vfloat even{};
  vfloat odd{};
  int64_t h = 0;
  for (; h + step <= width; h += step) {
    for (int a = 0; a < P; ++a) {
      const char* line = reinterpret_cast<const char*>(ahead[a] + h);
      if constexpr (step_bytes >= kLineBytes) {
        for (int64_t b = 0; b < step_bytes; b += kLineBytes) prefetch_line(line + b);
      } else if ((h * static_cast<int64_t>(sizeof(W))) % kLineBytes == 0) {
        prefetch_line(line);
      }
    }
    even += load(x + h) * load(w + h);
    odd += load(x + h + kLanes) * load(w + h + kLanes);
  }
  if (h + kLanes <= width) {
    even += load(x + h) * load(w + h);
    h += kLanes;
  }
  float s = horizontal_sum(even + odd);
  for (int64_t i = h; i < width; ++i) s += to_float(x[i]) * to_float(w[i]);
  return s;
}

// Dot products of `count` tokens (rows x[i]) with one shared weight row, kMaxBlock tokens per pass.
template <typename X, typename W>
inline void dot_shared_rows(const X* const* x, int64_t count, const W* w, int64_t width, float* z) {
  int64_t i = 0;
  for (; i + kMaxBlock <= count; i += kMaxBlock) dot_block<kMaxBlock>(x + i, w, width, z + i);
  if constexpr (kMaxBlock > 4) {
    if (i + 4 <= count) {
      dot_block<4>(x + i, w, width, z + i);
      i += 4;
    }
  }
  if (i + 2 <= count) {
    dot_block<2>(x + i, w, width, z + i);
    i += 2;
  }
  if (i < count) dot_block<1>(x + i, w, width, z + i);
}

// Columns [h, end) (at most kChunk) of sum_j coef[j] * rows[j], handed to `emit(h, vector)` a vector at a
// time and to `emit_scalar(h, value)` for a ragged tail.
template <typename T, typename Emit, typename EmitScalar>
inline void combine_chunk(const T* const* rows, const float* coef, int64_t count, int64_t h, int64_t end, Emit emit,
                          EmitScalar emit_scalar) {
  if (h + kChunk <= end) {
    vfloat a[kChunkVectors] = {};
    for (int64_t j = 0; j < count; ++j) {
      const vfloat c = broadcast(coef[j]);
      const T* r = rows[j] + h;
      for (int q = 0; q < kChunkVectors; ++q) a[q] += c * load(r + q * kLanes);
    }
    for (int q = 0; q < kChunkVectors; ++q) emit(h + q * kLanes, a[q]);
    return;
  }
  for (; h + kLanes <= end; h += kLanes) {
    vfloat a{};
    for (int64_t j = 0; j < count; ++j) a += broadcast(coef[j]) * load(rows[j] + h);
    emit(h, a);
  }
  for (; h < end; ++h) {
    float a = 0.0f;
    for (int64_t j = 0; j < count; ++j) a += coef[j] * to_float(rows[j][h]);
    emit_scalar(h, a);
  }
}

// Where a combined output row goes: out (+)= sum_j coef[j] * rows[j]. The float32 accumulator `acc` (may be
// `out` itself for float32) is read when `accumulate`; the final value is rounded into `out` (streamed when
// `stream`: written once and not read back soon, it need not evict the weights from cache).
template <typename T>
struct RowSink {
  float* acc;
  T* out;
  bool accumulate;
  bool final;
  bool stream;
};

template <typename T>
inline void sink_vector(const RowSink<T>& sink, int64_t c, vfloat v) {
  if (sink.accumulate) v += load(sink.acc + c);
  if (!sink.final) {
    store(sink.acc + c, v);
  } else if constexpr (std::is_same_v<T, float>) {
    if (sink.stream) {
      store_stream(sink.out + c, v);
    } else {
      store(sink.out + c, v);
    }
  } else {
    store(sink.out + c, v);
  }
}

// Columns [h, end) (at most kChunk) of one output row into `sink`.
template <typename W, typename T>
inline void combine_into(const RowSink<T>& sink, const W* const* rows, const float* coef, int64_t count, int64_t h,
                         int64_t end) {
  auto emit = [&](int64_t c, vfloat v) { sink_vector(sink, c, v); };
  auto emit_scalar = [&](int64_t c, float v) {
    if (sink.accumulate) v += sink.acc[c];
    if (sink.final) {
      sink.out[c] = T(v);
    } else {
      sink.acc[c] = v;
    }
  };
  combine_chunk(rows, coef, count, h, end, emit, emit_scalar);
}

// A float32 row into `out`, rounded once for bfloat16.
inline void store_row(float* out, const float* y, int64_t width) {
  if (out != y) std::memcpy(out, y, width * sizeof(float));
}

inline void store_row(bf16* out, const float* y, int64_t width) {
  int64_t h = 0;
  for (; h + kLanes <= width; h += kLanes) store(out + h, load(y + h));
  for (; h < width; ++h) out[h] = bf16(y[h]);  // round to nearest even, once
}

}  // namespace ultrafastbert::fff
