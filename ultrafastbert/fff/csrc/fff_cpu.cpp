// Compiled CPU kernels of the fast feedforward (FFF) layer; semantics in ../sparse.py (walk_forward/backward).
//
// The operator schemas are defined in Python (ultrafastbert/fff/ops.py, with their fake and autograd
// registrations); this file only provides the CPU implementations, so the ops exist (for tracing, fake
// tensors) even where this file cannot be compiled.
//
// Vectors are GCC vector extensions of 16 floats: with -march=native they lower to AVX-512 (one register),
// AVX2 (two) or SSE, from one source. bfloat16 is widened to float32 by a 16-bit shift; all arithmetic is
// float32 and every result is rounded once. Every dot product and every output row is summed in the same
// order whatever the batch, so a token's result does not depend on which other tokens share its call.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using bf16 = c10::BFloat16;

// ---- vectors ------------------------------------------------------------------------------------------

constexpr int64_t kLanes = 16;
typedef float vfloat __attribute__((vector_size(64)));
typedef float vfloat_u __attribute__((vector_size(64), aligned(4), may_alias));
typedef float vhalf __attribute__((vector_size(32)));
typedef float vquarter __attribute__((vector_size(16)));
typedef int32_t vint __attribute__((vector_size(64)));
typedef uint32_t vuint __attribute__((vector_size(64)));
typedef uint16_t vbf16 __attribute__((vector_size(32)));
typedef uint16_t vbf16_u __attribute__((vector_size(32), aligned(2), may_alias));

#ifdef __AVX512F__
constexpr int kMaxBlock = 8;  // tokens per dot-product pass: 2*8 accumulators + loads fit 32 registers
#else
constexpr int kMaxBlock = 4;
#endif

inline vfloat load(const float* p) { return *reinterpret_cast<const vfloat_u*>(p); }

inline vfloat load(const bf16* p) {
  // bfloat16 is the high half of a float32: widen to 32 bits and shift into place.
  const vuint wide = __builtin_convertvector(*reinterpret_cast<const vbf16_u*>(p), vuint) << 16;
  vfloat v;
  std::memcpy(&v, &wide, sizeof(v));
  return v;
}

inline void store(float* p, vfloat v) { *reinterpret_cast<vfloat_u*>(p) = v; }

inline void store(bf16* p, vfloat v) {
  // round to nearest even, as c10::BFloat16 does; NaN stays a (quiet) NaN
  vuint bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const vuint rounded = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16;
  const vuint result = (v != v) ? vuint{} + 0x7FC0 : rounded;
  *reinterpret_cast<vbf16_u*>(p) = __builtin_convertvector(result, vbf16);
}

// Non-temporal store (64-byte aligned p): outputs written once go straight to memory, without first reading
// the line in and without evicting the weights from cache.
inline void store_stream(float* p, vfloat v) {
#if defined(__AVX512F__)
  _mm512_stream_ps(p, reinterpret_cast<__m512&>(v));
#elif defined(__AVX__)
  vhalf lo, hi;
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  _mm256_stream_ps(p, reinterpret_cast<__m256&>(lo));
  _mm256_stream_ps(p + 8, reinterpret_cast<__m256&>(hi));
#else
  store(p, v);
#endif
}

// Orders streaming stores before anything that follows (the op's return, another thread's read).
inline void store_fence() {
#if defined(__SSE__)
  _mm_sfence();
#endif
}

inline vfloat broadcast(float s) { return vfloat{} + s; }

inline float horizontal_sum(vfloat v) {
  vhalf lo, hi;
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  const vhalf h = lo + hi;
  vquarter a, b;
  std::memcpy(&a, &h, sizeof(a));
  std::memcpy(&b, reinterpret_cast<const char*>(&h) + sizeof(a), sizeof(b));
  const vquarter q = a + b;
  return (q[0] + q[2]) + (q[1] + q[3]);
}

inline float to_float(float v) { return v; }
inline float to_float(bf16 v) { return static_cast<float>(v); }

// ---- GELU ---------------------------------------------------------------------------------------------
//
// Exact (erf) GELU, vectorised with the erf approximation PyTorch's own CPU GELU uses (Abramowitz & Stegun
// 7.1.26, |error| < 1.5e-7), so the kernel and the reference agree to float32 rounding. It is applied to a
// whole group's logits at once, so the polynomial chains of many vectors overlap.

inline vfloat exp_approx(vfloat x) {
  // 2**n * exp(r), |r| <= ln2/2: Cephes' degree-6 polynomial, about 1 ulp
  x = x < -87.0f ? vfloat{} - 87.0f : x;
  x = x > 88.0f ? vfloat{} + 88.0f : x;
  const vfloat shifter = broadcast(12582912.0f);  // 1.5 * 2**23: adding it rounds to an integer
  const vfloat n = (x * 1.44269504088896341f + shifter) - shifter;
  const vfloat r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  vfloat p = broadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vint scale_bits = (__builtin_convertvector(n, vint) + 127) << 23;
  vfloat scale;
  std::memcpy(&scale, &scale_bits, sizeof(scale));
  return p * scale;
}

inline vfloat erf_approx(vfloat x) {
  const vfloat a = x < 0.0f ? -x : x;
  const vfloat t = 1.0f / (a * 0.3275911f + 1.0f);
  vfloat r = broadcast(1.061405429f);
  r = r * t - 1.453152027f;
  r = r * t + 1.421413741f;
  r = r * t - 0.284496736f;
  r = r * t + 0.254829592f;
  const vfloat y = 1.0f - r * t * exp_approx(-(x * x));
  return x < 0.0f ? -y : y;
}

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

inline vfloat gelu(vfloat z) { return 0.5f * z * (1.0f + erf_approx(z * kInvSqrt2)); }

inline vfloat gelu_derivative(vfloat z) {
  return 0.5f * (1.0f + erf_approx(z * kInvSqrt2)) + z * exp_approx(-0.5f * z * z) * kInvSqrt2Pi;
}

// out[i] = op(in[i]) for `count` floats, a vector at a time (the tail through a padded copy).
template <typename Op>
inline void map_floats(const float* in, float* out, int64_t count, Op op) {
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) store(out + i, op(load(in + i)));
  if (i < count) {
    float padded[kLanes] = {};
    std::memcpy(padded, in + i, (count - i) * sizeof(float));
    const vfloat v = op(load(padded));
    std::memcpy(out + i, &v, (count - i) * sizeof(float));
  }
}

// ---- row kernels --------------------------------------------------------------------------------------

// z[b] = x[b] . w for B tokens sharing the weight row w, which is loaded once for all of them. Two
// accumulator chains per token and one fixed reduction order, whatever B, so a token's logit does not depend
// on the tokens computed beside it.
template <int B, typename X, typename W>
inline void dot_block(const X* const* x, const W* w, int64_t width, float* z) {
  vfloat even[B], odd[B];
  for (int b = 0; b < B; ++b) even[b] = odd[b] = vfloat{};
  int64_t h = 0;
  for (; h + 2 * kLanes <= width; h += 2 * kLanes) {
    const vfloat w0 = load(w + h), w1 = load(w + h + kLanes);
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
  vfloat even[B], odd[B];
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

// Dot products of `count` tokens (rows x[i]) with one shared weight row.
template <typename X, typename W>
inline void dot_shared_rows(const X* const* x, int64_t count, const W* w, int64_t width, float* z) {
  int64_t i = 0;
  for (; i + kMaxBlock <= count; i += kMaxBlock) dot_block<kMaxBlock>(x + i, w, width, z + i);
  if constexpr (kMaxBlock > 4) {
    if (i + 4 <= count) dot_block<4>(x + i, w, width, z + i), i += 4;
  }
  if (i + 2 <= count) dot_block<2>(x + i, w, width, z + i), i += 2;
  if (i < count) dot_block<1>(x + i, w, width, z + i);
}

constexpr int64_t kChunk = 4 * kLanes;  // output columns kept in registers while rows stream through

// Columns [h, end) (at most kChunk) of sum_j coef[j] * rows[j], handed to `emit(h, vector)` a vector at a
// time and to `emit_scalar(h, value)` for a ragged tail.
template <typename T, typename Emit, typename EmitScalar>
inline void combine_chunk(const T* const* rows, const float* coef, int64_t count, int64_t h, int64_t end, Emit emit,
                          EmitScalar emit_scalar) {
  if (h + kChunk <= end) {
    vfloat a0{}, a1{}, a2{}, a3{};
    for (int64_t j = 0; j < count; ++j) {
      const vfloat c = broadcast(coef[j]);
      const T* r = rows[j] + h;
      a0 += c * load(r);
      a1 += c * load(r + kLanes);
      a2 += c * load(r + 2 * kLanes);
      a3 += c * load(r + 3 * kLanes);
    }
    emit(h, a0), emit(h + kLanes, a1), emit(h + 2 * kLanes, a2), emit(h + 3 * kLanes, a3);
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

// out (+)= sum_j coef[j] * rows[j] for one row of `width` columns. The float32 accumulator `acc` (may be
// `out` itself for float32) is read when `accumulate`; the final value is rounded into `out` (streamed when
// `stream`: written once and not read back soon, it need not evict the weights from cache).
template <typename T>
struct RowSink {
  float* acc;
  T* out;
  bool accumulate, final, stream;
};

template <typename T>
inline void sink_vector(const RowSink<T>& sink, int64_t c, vfloat v) {
  if (sink.accumulate) v += load(sink.acc + c);
  if (!sink.final) {
    store(sink.acc + c, v);
  } else if constexpr (std::is_same_v<T, float>) {
    sink.stream ? store_stream(sink.out + c, v) : store(sink.out + c, v);
  } else {
    store(sink.out + c, v);
  }
}

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

inline void store_row(float* out, const float* y, int64_t width) {
  if (out != y) std::memcpy(out, y, width * sizeof(float));
}

inline void store_row(bf16* out, const float* y, int64_t width) {
  int64_t h = 0;
  for (; h + kLanes <= width; h += kLanes) store(out + h, load(y + h));
  for (; h < width; ++h) out[h] = bf16(y[h]);  // round to nearest even, once
}

// ---- shapes -------------------------------------------------------------------------------------------

struct Shape {
  int64_t tokens, width, depth, trees, nodes_per_tree;
  int64_t levels() const { return depth + 1; }
  int64_t path() const { return trees * (depth + 1); }  // visited nodes per token
};

Shape check_shapes(const at::Tensor& x, const at::Tensor& weight_in, const at::Tensor& weight_out_t, int64_t depth,
                   int64_t trees) {
  TORCH_CHECK(x.dim() == 2, "fff: x must be (N, H), got ", x.sizes());
  TORCH_CHECK(depth >= 0 && depth <= 24 && trees >= 1, "fff: need 0 <= depth <= 24 and trees >= 1");
  const int64_t n = (int64_t{2} << depth) - 1;
  TORCH_CHECK(weight_in.dim() == 2 && weight_in.size(0) == trees * n && weight_in.size(1) == x.size(1),
              "fff: weight_in must be (trees * (2**(depth+1) - 1), H) = (", trees * n, ", ", x.size(1), "), got ",
              weight_in.sizes());
  TORCH_CHECK(weight_out_t.sizes() == weight_in.sizes(), "fff: weight_out_t must be shaped like weight_in");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "fff: the CPU kernel supports float32 and bfloat16, got ", x.scalar_type());
  TORCH_CHECK(weight_in.scalar_type() == x.scalar_type() && weight_out_t.scalar_type() == x.scalar_type(),
              "fff: x and the weights must share a dtype");
  TORCH_CHECK(x.device().is_cpu() && weight_in.device().is_cpu() && weight_out_t.device().is_cpu(),
              "fff: the CPU kernel got a non-CPU tensor");
  return Shape{x.size(0), x.size(1), depth, trees, n};
}

at::Tensor contiguous(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

// ---- output buffers -----------------------------------------------------------------------------------
//
// Large outputs are recycled through a small pool instead of fresh pages from the OS: a new (16384, 768)
// float32 tensor costs ~20 ms of page faults (the OS zeroes every page), several times the forward itself.
// A tensor's memory returns to the pool when its last reference goes. A request takes the smallest free buffer
// that holds it without wasting more than half, so batches of varying size share buffers; the pool keeps at
// most kPoolBytes and, when over, frees its least recently returned buffers, so sizes no longer asked for go.

constexpr size_t kPoolMinBytes = size_t{256} << 10;
constexpr size_t kPoolBytes = size_t{1} << 30;  // room for a 16-layer training step's outputs at 16384 tokens
constexpr size_t kPoolAlignment = 64;

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
      if (it->capacity >= bytes && it->capacity / 2 <= bytes && (best == free_.end() || it->capacity < best->capacity)) {
        best = it;
      }
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

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return BufferPool::instance().empty(sizes, options);
}

// ---- forward ------------------------------------------------------------------------------------------
//
// A group of tokens walks a tree depth first: at a node, the dot products of all the group's tokens there
// share each load of the node's row; the tokens are then partitioned in place into the two children and each
// child is walked in turn. Once a node holds a handful of tokens their input rows stay in L1 for every level
// below; a token alone on its node walks on beside three others in the same position, so that their row
// fetches overlap. At the end the tokens are sorted by leaf, and tokens on one leaf share every row of their
// path, so the output rows are combined as a small matrix product: each weight chunk loaded once for all.
//
// Large batches split the levels into segments whose subtree rows fit in L2: every token walks the top
// segment, then the tokens are bucketed by the subtree they entered, and each subtree is walked by all of its
// tokens together while its rows stay in cache.

constexpr int64_t kGroupTokens = 128;        // tokens walked together from the root
constexpr int64_t kBucketGroupTokens = 256;  // tokens of one bucket walked together from its subtree root
constexpr int64_t kBucketMinTokens = 1024;   // below this, buckets hold too few tokens to pay for the sort
constexpr int64_t kSegmentBytes = 512 << 10;  // input and output rows of one segment's subtree: half an L2

template <typename T>
struct Forward {
  const T* x;
  const T* w_in;
  const T* b_in;
  const T* w_out;
  T* out;
  float* acc;           // float32 accumulator (N, H) across trees, or nullptr (one tree)
  int64_t* nodes;       // (N, K, D+1) global node index of every visited node
  float* logits;        // (N, K, D+1)
  int64_t* exit_local;  // (N,) local node each token reaches at the end of a segment (bucketed walks only)
  Shape s;
};

// One group's walk of one segment [first, last) of tree k. `tokens` is permuted in place, depth first.
template <typename T>
struct Walk {
  const Forward<T>& f;
  int64_t k, first, last;
  int64_t* tokens;
  std::vector<const T*>& x;  // x[i] = input row of tokens[i], permuted along with it
  std::vector<float>& z;
  std::vector<int64_t>& spill;
  std::vector<const T*>& spill_x;
  std::vector<std::array<int64_t, 3>>& solos;  // (slot, node, level) of tokens alone on their node
};

// Records token t's logit on local node `node` (at `level`) of tree k and returns the child it goes to.
template <typename T>
inline int64_t route(const Walk<T>& w, int64_t t, int64_t node, int64_t level, float logit) {
  const Shape& s = w.f.s;
  const int64_t record = t * s.path() + w.k * s.levels() + level;
  w.f.nodes[record] = w.k * s.nodes_per_tree + node;
  w.f.logits[record] = logit;
  return 2 * node + 1 + (logit > 0.0f);  // strict: 0 and NaN go left
}

// Walks the tokens that were left alone on a node down to the segment's end, four at a time: each step of a
// lone token waits on its own row (a cache miss on deep levels), so four walked side by side overlap them.
template <typename T>
void walk_solos(const Walk<T>& w) {
  const Forward<T>& f = w.f;
  const Shape& s = f.s;
  constexpr int kWalkers = 4;
  std::array<int64_t, 3> walkers[kWalkers];
  int active = 0;
  size_t queued = 0;
  const T* x[kWalkers];
  const T* rows[kWalkers];
  float z[kWalkers];
  while (true) {
    while (active < kWalkers && queued < w.solos.size()) walkers[active++] = w.solos[queued++];
    if (active == 0) break;
    for (int i = 0; i < active; ++i) {
      x[i] = w.x[walkers[i][0]];
      rows[i] = f.w_in + (w.k * s.nodes_per_tree + walkers[i][1]) * s.width;
    }
    switch (active) {
      case 1: dot_own_rows<1>(x, rows, s.width, z); break;
      case 2: dot_own_rows<2>(x, rows, s.width, z); break;
      case 3: dot_own_rows<3>(x, rows, s.width, z); break;
      default: dot_own_rows<4>(x, rows, s.width, z); break;
    }
    for (int i = 0; i < active;) {
      auto& [slot, node, level] = walkers[i];
      const int64_t global = w.k * s.nodes_per_tree + node;
      node = route(w, w.tokens[slot], node, level, z[i] + to_float(f.b_in[global]));
      if (++level < w.last) {
        __builtin_prefetch(f.w_in + (w.k * s.nodes_per_tree + node) * s.width);
        ++i;
        continue;
      }
      if (f.exit_local) f.exit_local[w.tokens[slot]] = node;
      walkers[i] = walkers[--active];
      z[i] = z[active];
    }
  }
}

// Walks the `count` tokens at slots [begin, begin + count), all on `node` at `level`, depth first: one shared
// dot product pass over the node's row, a stable in-place partition into the two children, then each child.
template <typename T>
void walk_node(const Walk<T>& w, int64_t node, int64_t level, int64_t begin, int64_t count) {
  if (count == 1) {
    w.solos.push_back({begin, node, level});
    return;
  }
  const Forward<T>& f = w.f;
  const Shape& s = f.s;
  const int64_t global = w.k * s.nodes_per_tree + node;
  const T* row = f.w_in + global * s.width;
  if (level + 1 < w.last) {  // start the children's rows on their way while this level computes
    __builtin_prefetch(row + (node + 1) * s.width);
    __builtin_prefetch(row + (node + 2) * s.width);
  }
  dot_shared_rows(w.x.data() + begin, count, row, s.width, w.z.data() + begin);
  const float bias = to_float(f.b_in[global]);
  int64_t left = 0, right = 0;
  for (int64_t i = begin; i < begin + count; ++i) {
    const int64_t t = w.tokens[i];
    if (route(w, t, node, level, w.z[i] + bias) == 2 * node + 2) {
      w.spill[right] = t, w.spill_x[right++] = w.x[i];
    } else {
      w.tokens[begin + left] = t, w.x[begin + left++] = w.x[i];
    }
  }
  for (int64_t i = 0; i < right; ++i) w.tokens[begin + left + i] = w.spill[i], w.x[begin + left + i] = w.spill_x[i];
  if (level + 1 == w.last) {
    if (f.exit_local) {
      for (int64_t i = begin; i < begin + left; ++i) f.exit_local[w.tokens[i]] = 2 * node + 1;
      for (int64_t i = begin + left; i < begin + count; ++i) f.exit_local[w.tokens[i]] = 2 * node + 2;
    }
    return;
  }
  if (left) walk_node(w, 2 * node + 1, level + 1, begin, left);
  if (right) walk_node(w, 2 * node + 2, level + 1, begin + left, right);
}

// Output rows of tokens that share their whole path in tree k: Y (m x H) (+)= A (m x L) W (L x H), where A
// holds their GELU'd logits; each chunk of a weight row is loaded once for M tokens.
template <int M, typename T>
inline void combine_shared_path(const Forward<T>& f, int64_t k, const int64_t* tokens, const T* const* rows,
                                const float* coef, bool stream) {
  const Shape& s = f.s;
  const int64_t levels = s.levels();
  const bool final = k == s.trees - 1;
  RowSink<T> sinks[M];
  for (int m = 0; m < M; ++m) {
    const int64_t t = tokens[m];
    sinks[m] = RowSink<T>{f.acc ? f.acc + t * s.width : nullptr, f.out + t * s.width, k > 0, final, stream && final};
  }
  int64_t h = 0;
  for (; h + kChunk <= s.width; h += kChunk) {
    vfloat acc[M][4];
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = vfloat{};
    for (int64_t j = 0; j < levels; ++j) {
      const T* r = rows[j] + h;
      const vfloat w0 = load(r), w1 = load(r + kLanes), w2 = load(r + 2 * kLanes), w3 = load(r + 3 * kLanes);
      for (int m = 0; m < M; ++m) {
        const vfloat c = broadcast(coef[m * levels + j]);
        acc[m][0] += c * w0, acc[m][1] += c * w1, acc[m][2] += c * w2, acc[m][3] += c * w3;
      }
    }
    for (int m = 0; m < M; ++m) {
      for (int q = 0; q < 4; ++q) sink_vector(sinks[m], h + q * kLanes, acc[m][q]);
    }
  }
  if (h < s.width) {
    for (int m = 0; m < M; ++m) combine_into(sinks[m], rows, coef + m * levels, levels, h, s.width);
  }
}

// Per-thread scratch, grown on demand and kept (thread_local) so that small calls do not allocate.
template <typename T>
struct Scratch {
  std::vector<const T*> x, spill_x, rows;
  std::vector<float> z, coef;
  std::vector<int64_t> tokens, spill;
  std::vector<std::array<int64_t, 3>> solos;

  void reserve(int64_t group, int64_t levels) {
    if (static_cast<int64_t>(x.size()) < group) {
      x.resize(group), spill_x.resize(group), z.resize(group), tokens.resize(group), spill.resize(group);
    }
    if (static_cast<int64_t>(coef.size()) < group * levels) coef.resize(group * levels);
    if (static_cast<int64_t>(rows.size()) < levels) rows.resize(levels);
  }
};

// Adds tree k's contribution to the outputs of a walked group, leaf run by leaf run.
template <typename T>
void combine_group(const Forward<T>& f, int64_t k, const int64_t* tokens, int64_t count, Scratch<T>& scratch) {
  const Shape& s = f.s;
  const int64_t levels = s.levels(), path = s.path(), record = k * levels;
  const bool stream =
      std::is_same_v<T, float> && s.width % kLanes == 0 && reinterpret_cast<uintptr_t>(f.out) % 64 == 0;
  // GELU of every logit of the group at once (vectors across tokens: enough independent work to pipeline)
  for (int64_t i = 0; i < count; ++i) {
    std::memcpy(scratch.coef.data() + i * levels, f.logits + tokens[i] * path + record, levels * sizeof(float));
  }
  map_floats(scratch.coef.data(), scratch.coef.data(), count * levels, [](vfloat z) { return gelu(z); });
  for (int64_t begin = 0; begin < count;) {  // runs of up to 4 tokens on one leaf
    const int64_t leaf = f.nodes[tokens[begin] * path + record + levels - 1];
    int64_t end = begin + 1;
    while (end < count && end - begin < 4 && f.nodes[tokens[end] * path + record + levels - 1] == leaf) ++end;
    for (int64_t level = 0; level < levels; ++level) {
      scratch.rows[level] = f.w_out + f.nodes[tokens[begin] * path + record + level] * s.width;
    }
    const T* const* rows = scratch.rows.data();
    const float* coef = scratch.coef.data() + begin * levels;
    switch (end - begin) {
      case 1: combine_shared_path<1>(f, k, tokens + begin, rows, coef, stream); break;
      case 2: combine_shared_path<2>(f, k, tokens + begin, rows, coef, stream); break;
      case 3: combine_shared_path<3>(f, k, tokens + begin, rows, coef, stream); break;
      default: combine_shared_path<4>(f, k, tokens + begin, rows, coef, stream); break;
    }
    begin = end;
  }
  if (stream) store_fence();
}

// Levels per segment: as many as keep a subtree's input and output rows within kSegmentBytes.
int64_t segment_levels(int64_t row_bytes) {
  int64_t levels = 1;
  while (((int64_t{2} << levels) - 1) * 2 * row_bytes <= kSegmentBytes) ++levels;
  return levels;
}

struct Group {
  int64_t begin, count, start;  // tokens order[begin : begin + count] (or that range itself without an
                                // order), all on local node `start`
};

// Walks groups [begin, end) through levels [first, last) of tree k; combines the outputs after the last
// segment (`finish`).
template <typename T>
void walk_groups(const Forward<T>& f, int64_t k, int64_t first, int64_t last, const std::vector<Group>& groups,
                 int64_t begin, int64_t end, const int64_t* order, bool finish) {
  static thread_local Scratch<T> scratch;
  for (int64_t g = begin; g < end; ++g) {
    const Group& group = groups[g];
    scratch.reserve(group.count, f.s.levels());
    for (int64_t i = 0; i < group.count; ++i) {
      const int64_t t = order ? order[group.begin + i] : group.begin + i;
      scratch.tokens[i] = t;
      scratch.x[i] = f.x + t * f.s.width;
    }
    scratch.solos.clear();
    const Walk<T> walk{f,         k,         first,         last,           scratch.tokens.data(),
                       scratch.x, scratch.z, scratch.spill, scratch.spill_x, scratch.solos};
    walk_node(walk, group.start, first, 0, group.count);
    walk_solos(walk);
    if (finish) combine_group(f, k, scratch.tokens.data(), group.count, scratch);
  }
}

// Runs the groups on all threads. Threads take chunks of consecutive groups (consecutive groups of a bucket
// share its rows in that thread's cache) from a shared counter until none are left: buckets differ in size.
template <typename T>
void run_groups(const Forward<T>& f, int64_t k, int64_t first, int64_t last, const std::vector<Group>& groups,
                const int64_t* order, bool finish) {
  const int64_t count = static_cast<int64_t>(groups.size());
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), count);
  if (threads <= 1) {  // e.g. one token: no parallel region
    walk_groups(f, k, first, last, groups, 0, count, order, finish);
    return;
  }
  const int64_t chunk = std::max<int64_t>(1, count / (8 * threads));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t g = next.fetch_add(chunk); g < count; g = next.fetch_add(chunk)) {
      walk_groups(f, k, first, last, groups, g, std::min(g + chunk, count), order, finish);
    }
  });
}

// Groups of at most kGroupTokens of [0, tokens), at least one per thread when there are enough tokens.
std::vector<Group> even_groups(int64_t tokens) {
  const int64_t threads = at::get_num_threads();
  const int64_t count = std::max((tokens + kGroupTokens - 1) / kGroupTokens, std::min(threads, tokens / 4));
  std::vector<Group> groups;
  groups.reserve(count);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t begin = tokens * i / count, end = tokens * (i + 1) / count;
    if (end > begin) groups.push_back({begin, end - begin, 0});
  }
  return groups;
}

// Groups of the tokens bucketed by the subtree (local node on level `first`) each entered: `order` receives
// the tokens sorted by bucket (a stable counting sort); buckets larger than kBucketGroupTokens are split.
std::vector<Group> bucket_groups(const int64_t* exit_local, int64_t tokens, int64_t first, int64_t* order) {
  const int64_t level_start = (int64_t{1} << first) - 1, buckets = int64_t{1} << first;
  std::vector<int64_t> counts(buckets + 1, 0);
  for (int64_t t = 0; t < tokens; ++t) ++counts[exit_local[t] - level_start + 1];
  for (int64_t b = 0; b < buckets; ++b) counts[b + 1] += counts[b];
  std::vector<Group> groups;
  for (int64_t b = 0; b < buckets; ++b) {
    const int64_t size = counts[b + 1] - counts[b], parts = (size + kBucketGroupTokens - 1) / kBucketGroupTokens;
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t begin = counts[b] + size * p / parts, end = counts[b] + size * (p + 1) / parts;
      groups.push_back({begin, end - begin, level_start + b});
    }
  }
  for (int64_t t = 0; t < tokens; ++t) order[counts[exit_local[t] - level_start]++] = t;
  return groups;
}

template <typename T>
void forward(const Forward<T>& f) {
  const Shape& s = f.s;
  if (s.tokens == 0) return;
  const int64_t segment = f.exit_local ? segment_levels(s.width * static_cast<int64_t>(sizeof(T))) : s.levels();
  const std::vector<Group> first_groups = even_groups(s.tokens);
  std::vector<int64_t> order(f.exit_local ? s.tokens : 0);
  for (int64_t k = 0; k < s.trees; ++k) {
    run_groups(f, k, 0, std::min(segment, s.levels()), first_groups, nullptr, segment >= s.levels());
    for (int64_t first = segment; first < s.levels(); first += segment) {
      const int64_t last = std::min(first + segment, s.levels());
      const std::vector<Group> groups = bucket_groups(f.exit_local, s.tokens, first, order.data());
      run_groups(f, k, first, last, groups, order.data(), last == s.levels());
    }
  }
}

struct Inputs {
  at::Tensor x, weight_in, bias_in, weight_out_t;
  Shape s;
};

Inputs prepare(const at::Tensor& x, const at::Tensor& weight_in, const at::Tensor& bias_in,
               const at::Tensor& weight_out_t, int64_t depth, int64_t trees) {
  Inputs in{contiguous(x), contiguous(weight_in), contiguous(bias_in), contiguous(weight_out_t), {}};
  in.s = check_shapes(in.x, in.weight_in, in.weight_out_t, depth, trees);
  TORCH_CHECK(in.bias_in.dim() == 1 && in.bias_in.size(0) == in.weight_in.size(0) &&
                  in.bias_in.scalar_type() == in.x.scalar_type(),
              "fff: bias_in must be (", in.weight_in.size(0), ",) of the weights' dtype");
  return in;
}

template <typename T>
void forward_into(const Inputs& in, at::Tensor& out, int64_t* nodes, float* logits) {
  const Shape& s = in.s;
  // with several trees, outputs accumulate in float32 across trees (in `out` itself for float32)
  at::Tensor acc;
  if (!std::is_same_v<T, float> && s.trees > 1) acc = pooled_empty({s.tokens, s.width}, in.x.options().dtype(at::kFloat));
  float* acc_data = nullptr;
  if (s.trees > 1) acc_data = acc.defined() ? acc.data_ptr<float>() : reinterpret_cast<float*>(out.data_ptr<T>());
  const bool bucketed =
      s.tokens >= kBucketMinTokens && s.levels() > segment_levels(s.width * static_cast<int64_t>(sizeof(T)));
  std::vector<int64_t> exit_local(bucketed ? s.tokens : 0);
  const Forward<T> f{in.x.data_ptr<T>(),
                     in.weight_in.data_ptr<T>(),
                     in.bias_in.data_ptr<T>(),
                     in.weight_out_t.data_ptr<T>(),
                     out.data_ptr<T>(),
                     acc_data,
                     nodes,
                     logits,
                     bucketed ? exit_local.data() : nullptr,
                     s};
  forward(f);
}

void dispatch_forward(const Inputs& in, at::Tensor& out, int64_t* nodes, float* logits) {
  if (in.x.scalar_type() == at::kFloat) {
    forward_into<float>(in, out, nodes, logits);
  } else {
    forward_into<bf16>(in, out, nodes, logits);
  }
}

at::Tensor fff_infer_cpu(const at::Tensor& x, const at::Tensor& weight_in, const at::Tensor& bias_in,
                         const at::Tensor& weight_out_t, int64_t depth, int64_t trees) {
  const Inputs in = prepare(x, weight_in, bias_in, weight_out_t, depth, trees);
  at::Tensor out = pooled_empty({in.s.tokens, in.s.width}, in.x.options());
  static thread_local std::vector<int64_t> nodes;  // the path records are scratch here
  static thread_local std::vector<float> logits;
  const int64_t records = in.s.tokens * in.s.path();
  if (static_cast<int64_t>(nodes.size()) < records) nodes.resize(records), logits.resize(records);
  dispatch_forward(in, out, nodes.data(), logits.data());
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fff_forward_cpu(const at::Tensor& x, const at::Tensor& weight_in,
                                                                 const at::Tensor& bias_in,
                                                                 const at::Tensor& weight_out_t, int64_t depth,
                                                                 int64_t trees) {
  const Inputs in = prepare(x, weight_in, bias_in, weight_out_t, depth, trees);
  at::Tensor out = pooled_empty({in.s.tokens, in.s.width}, in.x.options());
  at::Tensor nodes = pooled_empty({in.s.tokens, in.s.trees, in.s.levels()}, in.x.options().dtype(at::kLong));
  at::Tensor logits = pooled_empty({in.s.tokens, in.s.trees, in.s.levels()}, in.x.options().dtype(at::kFloat));
  dispatch_forward(in, out, nodes.data_ptr<int64_t>(), logits.data_ptr<float>());
  return {out, nodes, logits};
}

// ---- backward -----------------------------------------------------------------------------------------
//
// The tokens are first sorted by the leaf they reach (a counting sort per tree), which is the depth-first
// order of the tree: consecutive tokens share most of their path.
//
// Per token (parallel over the sorted tokens, no sharing): d(activation) = grad_out . w_out row,
// dz = that * GELU'(z), and grad_x = sum dz * w_in rows; rows shared with the previous tokens come from cache.
//
// The weight gradients are sums over the tokens that visited a row. One sweep per tree and block of columns
// walks the sorted tokens, reading each token's input and gradient columns once and adding them into one
// accumulator per level; when the sweep leaves a node's subtree, that node's accumulators are final and are
// written out. Every gradient row is written exactly once (unvisited rows as zeros), by one thread, with no
// atomics and no per-thread copies of the gradients.

constexpr int64_t kSweepColumns = 128;  // per sweep: 2 x levels accumulators of this width stay in L1

// Tokens of tree k in depth-first (leaf) order.
void sort_by_leaf(const int64_t* nodes, const Shape& s, int64_t k, int64_t* order) {
  const int64_t leaves = int64_t{1} << s.depth, first_leaf = k * s.nodes_per_tree + leaves - 1;
  const int64_t path = s.path(), leaf_level = k * s.levels() + s.depth;
  std::vector<int64_t> counts(leaves + 1, 0);
  for (int64_t t = 0; t < s.tokens; ++t) ++counts[nodes[t * path + leaf_level] - first_leaf + 1];
  for (int64_t b = 0; b < leaves; ++b) counts[b + 1] += counts[b];
  for (int64_t t = 0; t < s.tokens; ++t) order[counts[nodes[t * path + leaf_level] - first_leaf]++] = t;
}

// d(activation), dz and GELU for every visited node of the tokens order[begin, end), and their grad_x rows.
template <typename T>
void token_gradients(const T* grad_out, const T* w_in, const T* w_out, const int64_t* nodes, const float* logits,
                     const Shape& s, const int64_t* order, int64_t begin, int64_t end, float* dz, float* activation,
                     T* grad_x) {
  const int64_t path = s.path();
  std::vector<float> derivative(path);
  std::vector<const T*> in_rows(path);
  for (int64_t i = begin; i < end; ++i) {
    const int64_t t = order[i];
    const T* g = grad_out + t * s.width;
    map_floats(logits + t * path, activation + t * path, path, [](vfloat z) { return gelu(z); });
    map_floats(logits + t * path, derivative.data(), path, [](vfloat z) { return gelu_derivative(z); });
    for (int64_t j = 0; j < path; ++j) {
      float d_activation;
      dot_block<1>(&g, w_out + nodes[t * path + j] * s.width, s.width, &d_activation);
      dz[t * path + j] = d_activation * derivative[j];
      in_rows[j] = w_in + nodes[t * path + j] * s.width;
    }
    const RowSink<T> sink{nullptr, grad_x + t * s.width, false, true, false};
    for (int64_t h = 0; h < s.width; h += kChunk) {
      combine_into(sink, in_rows.data(), dz + t * path, path, h, std::min(h + kChunk, s.width));
    }
  }
}

// Columns [c0, c0 + columns) of the weight gradients of tree k, from one sweep over its sorted tokens.
template <typename T>
void sweep_weight_gradients(const T* x, const T* grad_out, const int64_t* nodes, const float* dz,
                            const float* activation, const Shape& s, int64_t k, const int64_t* order, int64_t c0,
                            int64_t columns, T* grad_w_in, T* grad_b_in, T* grad_w_out) {
  const int64_t levels = s.levels(), path = s.path(), record = k * levels;
  std::vector<float> acc_in(levels * kSweepColumns), acc_out(levels * kSweepColumns), acc_bias(levels);
  std::vector<int64_t> current(levels, -1);
  auto flush = [&](int64_t level) {
    const int64_t row = current[level];
    if (row < 0) return;
    store_row(grad_w_in + row * s.width + c0, acc_in.data() + level * kSweepColumns, columns);
    store_row(grad_w_out + row * s.width + c0, acc_out.data() + level * kSweepColumns, columns);
    if (c0 == 0) grad_b_in[row] = T(acc_bias[level]);
  };
  for (int64_t i = 0; i < s.tokens; ++i) {
    const int64_t t = order[i];
    const int64_t* token_nodes = nodes + t * path + record;
    const float* token_dz = dz + t * path + record;
    const float* token_activation = activation + t * path + record;
    for (int64_t level = 0; level < levels; ++level) {
      if (token_nodes[level] == current[level]) continue;
      for (int64_t l = level; l < levels; ++l) {  // left this subtree: its nodes are complete
        flush(l);
        current[l] = token_nodes[l];
        std::fill_n(acc_in.data() + l * kSweepColumns, kSweepColumns, 0.0f);
        std::fill_n(acc_out.data() + l * kSweepColumns, kSweepColumns, 0.0f);
        acc_bias[l] = 0.0f;
      }
      break;
    }
    const T* xr = x + t * s.width + c0;
    const T* gr = grad_out + t * s.width + c0;
    if (i + 4 < s.tokens) {  // the columns of a token a few ahead: the sorted order jumps around memory
      const char* next_x = reinterpret_cast<const char*>(x + order[i + 4] * s.width + c0);
      const char* next_g = reinterpret_cast<const char*>(grad_out + order[i + 4] * s.width + c0);
      for (int64_t b = 0; b < columns * static_cast<int64_t>(sizeof(T)); b += 64) {
        __builtin_prefetch(next_x + b), __builtin_prefetch(next_g + b);
      }
    }
    if (columns == kSweepColumns) {
      vfloat xv[kSweepColumns / kLanes], gv[kSweepColumns / kLanes];
      for (int64_t v = 0; v < kSweepColumns / kLanes; ++v) xv[v] = load(xr + v * kLanes), gv[v] = load(gr + v * kLanes);
      for (int64_t level = 0; level < levels; ++level) {
        const vfloat d = broadcast(token_dz[level]), a = broadcast(token_activation[level]);
        float* in = acc_in.data() + level * kSweepColumns;
        float* out = acc_out.data() + level * kSweepColumns;
        for (int64_t v = 0; v < kSweepColumns / kLanes; ++v) {
          store(in + v * kLanes, load(in + v * kLanes) + d * xv[v]);
          store(out + v * kLanes, load(out + v * kLanes) + a * gv[v]);
        }
        acc_bias[level] += token_dz[level];
      }
    } else {
      for (int64_t level = 0; level < levels; ++level) {
        float* in = acc_in.data() + level * kSweepColumns;
        float* out = acc_out.data() + level * kSweepColumns;
        for (int64_t c = 0; c < columns; ++c) {
          in[c] += token_dz[level] * to_float(xr[c]);
          out[c] += token_activation[level] * to_float(gr[c]);
        }
        acc_bias[level] += token_dz[level];
      }
    }
  }
  for (int64_t level = 0; level < levels; ++level) flush(level);
}

template <typename T>
void backward(const T* grad_out, const T* x, const T* w_in, const T* w_out, const int64_t* nodes,
              const float* logits, const Shape& s, T* grad_x, T* grad_w_in, T* grad_b_in, T* grad_w_out) {
  const int64_t path = s.path(), pairs = s.tokens * path, rows = s.trees * s.nodes_per_tree;
  std::vector<uint8_t> visited(rows, 0);
  for (int64_t p = 0; p < pairs; ++p) {
    TORCH_CHECK(nodes[p] >= 0 && nodes[p] < rows, "fff_backward: node index ", nodes[p], " out of range");
    visited[nodes[p]] = 1;
  }
  std::vector<int64_t> order(s.trees * s.tokens);
  at::parallel_for(0, s.trees, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) sort_by_leaf(nodes, s, k, order.data() + k * s.tokens);
  });
  std::vector<float> dz(pairs), activation(pairs);
  at::parallel_for(0, s.tokens, 16, [&](int64_t begin, int64_t end) {
    token_gradients(grad_out, w_in, w_out, nodes, logits, s, order.data(), begin, end, dz.data(), activation.data(),
                    grad_x);
  });
  const int64_t blocks = (s.width + kSweepColumns - 1) / kSweepColumns;
  at::parallel_for(0, s.trees * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t k = item / blocks, c0 = (item % blocks) * kSweepColumns;
      sweep_weight_gradients(x, grad_out, nodes, dz.data(), activation.data(), s, k, order.data() + k * s.tokens, c0,
                             std::min(kSweepColumns, s.width - c0), grad_w_in, grad_b_in, grad_w_out);
    }
  });
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {  // rows no token visited
    for (int64_t r = begin; r < end; ++r) {
      if (visited[r]) continue;
      std::fill_n(grad_w_in + r * s.width, s.width, T(0));
      std::fill_n(grad_w_out + r * s.width, s.width, T(0));
      grad_b_in[r] = T(0);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fff_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& x_, const at::Tensor& weight_in_, const at::Tensor& weight_out_t_,
    const at::Tensor& nodes_, const at::Tensor& logits_) {
  const at::Tensor grad_out = contiguous(grad_out_), x = contiguous(x_), weight_in = contiguous(weight_in_),
                   weight_out_t = contiguous(weight_out_t_), nodes = contiguous(nodes_), logits = contiguous(logits_);
  TORCH_CHECK(nodes.dim() == 3 && nodes.scalar_type() == at::kLong, "fff_backward: nodes must be (N, K, D+1) int64");
  TORCH_CHECK(logits.sizes() == nodes.sizes() && logits.scalar_type() == at::kFloat,
              "fff_backward: logits must be float32 shaped like nodes");
  const Shape s = check_shapes(x, weight_in, weight_out_t, nodes.size(2) - 1, nodes.size(1));
  TORCH_CHECK(nodes.size(0) == s.tokens && grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type(),
              "fff_backward: grad_out, x, nodes must agree on (N, H) and dtype");
  at::Tensor grad_x = pooled_empty(x.sizes(), x.options()), grad_w_in = pooled_empty(weight_in.sizes(), weight_in.options()),
             grad_b_in = pooled_empty({weight_in.size(0)}, weight_in.options()),
             grad_w_out_t = pooled_empty(weight_out_t.sizes(), weight_out_t.options());
  auto run = [&](auto type_tag) {
    using T = decltype(type_tag);
    backward<T>(grad_out.data_ptr<T>(), x.data_ptr<T>(), weight_in.data_ptr<T>(), weight_out_t.data_ptr<T>(),
                nodes.data_ptr<int64_t>(), logits.data_ptr<float>(), s, grad_x.data_ptr<T>(),
                grad_w_in.data_ptr<T>(), grad_b_in.data_ptr<T>(), grad_w_out_t.data_ptr<T>());
  };
  if (x.scalar_type() == at::kFloat) {
    run(float{});
  } else {
    run(bf16{});
  }
  return {grad_x, grad_w_in, grad_b_in, grad_w_out_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(ultrafastbert, CPU, m) {
  m.impl("fff_infer", &fff_infer_cpu);
  m.impl("fff_forward", &fff_forward_cpu);
  m.impl("fff_backward", &fff_backward_cpu);
}
