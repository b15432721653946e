// The backward: all four gradients from the nodes and logits the training forward recorded. Semantics:
// walk_backward in ../sparse.py.
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
// atomics and no per-thread copies of the gradients. The gradient of weight_out_t is then transposed, tile by
// tile, into (H, K * n) row-major, which is linear_out.weight's own layout: autograd hands it to the parameter as
// it is, where a row-major (K * n, H) gradient cost autograd a slower full-matrix transposed copy per step.

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernel.h"
#include "rows.h"
#include "vec.h"

namespace ultrafastbert::fff {
namespace {

constexpr int64_t kSweepColumns = 128;       // columns per sweep: 2 x levels accumulators of this width stay in L1
constexpr int64_t kPrefetchTokensAhead = 4;  // the sweep prefetches the columns of the token this far ahead
constexpr int64_t kCacheLineBytes = 64;      // stride of those prefetches
constexpr int64_t kTokenGrain = 16;          // fewest tokens per thread task for the per-token gradients
constexpr int64_t kZeroRowsGrain = 64;       // fewest rows per thread task when zeroing unvisited rows
constexpr int64_t kTransposeTile = 16;       // rows and columns of one tile of the gradient's transposition

// Tokens of tree k in depth-first (leaf) order.
void sort_by_leaf(const int64_t* nodes, const Shape& s, int64_t k, int64_t* order) {
  const int64_t leaves = int64_t{1} << s.depth;
  const int64_t first_leaf = k * s.nodes_per_tree + leaves - 1;
  const int64_t path = s.path();
  const int64_t leaf_level = k * s.levels() + s.depth;
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
  const int64_t levels = s.levels();
  const int64_t path = s.path();
  const int64_t record = k * levels;
  std::vector<float> acc_in(levels * kSweepColumns);
  std::vector<float> acc_out(levels * kSweepColumns);
  std::vector<float> acc_bias(levels);
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
    if (i + kPrefetchTokensAhead < s.tokens) {  // the sorted order jumps around memory
      const int64_t ahead = order[i + kPrefetchTokensAhead];
      const char* next_x = reinterpret_cast<const char*>(x + ahead * s.width + c0);
      const char* next_g = reinterpret_cast<const char*>(grad_out + ahead * s.width + c0);
      for (int64_t b = 0; b < columns * static_cast<int64_t>(sizeof(T)); b += kCacheLineBytes) {
        __builtin_prefetch(next_x + b);
        __builtin_prefetch(next_g + b);
      }
    }
    if (columns == kSweepColumns) {
      vfloat xv[kSweepColumns / kLanes];
      vfloat gv[kSweepColumns / kLanes];
      for (int64_t v = 0; v < kSweepColumns / kLanes; ++v) {
        xv[v] = load(xr + v * kLanes);
        gv[v] = load(gr + v * kLanes);
      }
      for (int64_t level = 0; level < levels; ++level) {
        const vfloat d = broadcast(token_dz[level]);
        const vfloat a = broadcast(token_activation[level]);
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

// out (width, rows) = in (rows, width) transposed, both row-major, a tile at a time, parallel over column blocks.
template <typename T>
void transpose(const T* in, int64_t rows, int64_t width, T* out) {
  at::parallel_for(0, (width + kTransposeTile - 1) / kTransposeTile, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t h0 = block * kTransposeTile;
      const int64_t h1 = std::min(width, h0 + kTransposeTile);
      for (int64_t r0 = 0; r0 < rows; r0 += kTransposeTile) {
        const int64_t r1 = std::min(rows, r0 + kTransposeTile);
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t r = r0; r < r1; ++r) out[h * rows + r] = in[r * width + h];
        }
      }
    }
  });
}

}  // namespace

template <typename T>
void backward(const T* grad_out, const T* x, const T* w_in, const T* w_out, const int64_t* nodes, const float* logits,
              const Shape& s, T* grad_x, T* grad_w_in, T* grad_b_in, T* grad_w_out, T* grad_w_out_t) {
  const int64_t path = s.path();
  const int64_t pairs = s.tokens * path;
  const int64_t rows = s.trees * s.nodes_per_tree;
  std::vector<uint8_t> visited(rows, 0);
  for (int64_t p = 0; p < pairs; ++p) {
    TORCH_CHECK(nodes[p] >= 0 && nodes[p] < rows, "fff_backward: node index ", nodes[p], " out of range");
    visited[nodes[p]] = 1;
  }
  std::vector<int64_t> order(s.trees * s.tokens);
  at::parallel_for(0, s.trees, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) sort_by_leaf(nodes, s, k, order.data() + k * s.tokens);
  });
  std::vector<float> dz(pairs);
  std::vector<float> activation(pairs);
  at::parallel_for(0, s.tokens, kTokenGrain, [&](int64_t begin, int64_t end) {
    token_gradients(grad_out, w_in, w_out, nodes, logits, s, order.data(), begin, end, dz.data(), activation.data(),
                    grad_x);
  });
  const int64_t blocks = (s.width + kSweepColumns - 1) / kSweepColumns;
  at::parallel_for(0, s.trees * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t k = item / blocks;
      const int64_t c0 = (item % blocks) * kSweepColumns;
      sweep_weight_gradients(x, grad_out, nodes, dz.data(), activation.data(), s, k, order.data() + k * s.tokens, c0,
                             std::min(kSweepColumns, s.width - c0), grad_w_in, grad_b_in, grad_w_out);
    }
  });
  at::parallel_for(0, rows, kZeroRowsGrain, [&](int64_t begin, int64_t end) {  // rows no token visited
    for (int64_t r = begin; r < end; ++r) {
      if (visited[r]) continue;
      std::fill_n(grad_w_in + r * s.width, s.width, T(0));
      std::fill_n(grad_w_out + r * s.width, s.width, T(0));
      grad_b_in[r] = T(0);
    }
  });
  transpose(grad_w_out, rows, s.width, grad_w_out_t);
}

template void backward<float>(const float*, const float*, const float*, const float*, const int64_t*, const float*,
                              const Shape&, float*, float*, float*, float*, float*);
template void backward<bf16>(const bf16*, const bf16*, const bf16*, const bf16*, const int64_t*, const float*,
                             const Shape&, bf16*, bf16*, bf16*, bf16*, bf16*);

}  // namespace ultrafastbert::fff
