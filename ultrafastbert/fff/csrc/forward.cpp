// The forward: every token walks its root-to-leaf path in each tree, and its output row sums GELU(logit) times
// the output weight row of every node it visited. Semantics: walk_forward in ../sparse.py.
//
// A group of tokens walks a tree depth first: at a node, the dot products of all the group's tokens there
// share each load of the node's row; the tokens are then partitioned in place into the two children and each
// child is walked in turn. Once a node holds a handful of tokens their input rows stay in L1 for every level
// below; a token alone on its node walks on beside three others in the same position, so that their row
// fetches overlap. At the end the partitions have left the tokens sorted by leaf, and tokens on one leaf share
// every row of their path, so their output rows are combined as a small matrix product: each weight chunk is
// loaded once for all of them.
//
// Large batches split the levels into segments whose subtree rows fit in L2: every token walks the top
// segment, then the tokens are bucketed by the subtree they entered, and each subtree is walked by all of its
// tokens together while its rows stay in cache.
//
// A single token (batch-1 decoding) walks on its own (walk_one_token), prefetching the rows it will need next.

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernel.h"
#include "rows.h"
#include "vec.h"

namespace ultrafastbert::fff {
namespace {

constexpr int64_t kGroupTokens = 128;         // tokens walked together from the root
constexpr int64_t kBucketGroupTokens = 256;   // tokens of one bucket walked together from its subtree root
constexpr int64_t kBucketMinTokens = 1024;    // below this, buckets hold too few tokens to pay for the sort
constexpr int64_t kSegmentBytes = 512 << 10;  // input and output rows of one segment's subtree: half an L2
constexpr int64_t kMinGroupTokens = 4;        // fewest tokens per group when splitting a small batch over threads
constexpr int64_t kGroupChunksPerThread = 8;  // groups are handed out in chunks: about this many per thread
constexpr int kSoloWalkers = 4;               // lone tokens walked side by side, so their row fetches overlap
constexpr int64_t kLeafRunTokens = 4;         // most tokens on one leaf whose output rows are combined together
constexpr uintptr_t kStreamAlignment = 64;    // streaming stores need the output rows aligned to this

// The buffers of one forward call (ForwardArgs) and the walk's own record of where each token left a segment.
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
  const float* offset;  // (K * n,) routing offsets, or nullptr
  int64_t* exit_local;  // (N,) local node each token reaches at the end of a segment (bucketed walks only)
  Shape s;
};

// One group's walk of one segment [first, last) of tree k. `tokens` is permuted in place, depth first.
template <typename T>
struct Walk {
  const Forward<T>& f;
  int64_t k;
  int64_t first;
  int64_t last;
  int64_t* tokens;
  std::vector<const T*>& x;  // x[i] = input row of tokens[i], permuted along with it
  std::vector<float>& z;
  std::vector<int64_t>& spill;
  std::vector<const T*>& spill_x;
  std::vector<std::array<int64_t, 3>>& solos;  // (slot, node, level) of tokens alone on their node
};

// Records token t's logit on local node `node` (at `level`) of tree k and returns the child it goes to.
template <typename T>
inline int64_t route(const Forward<T>& f, int64_t k, int64_t t, int64_t node, int64_t level, float logit) {
  const Shape& s = f.s;
  const int64_t record = t * s.path() + k * s.levels() + level;
  f.nodes[record] = k * s.nodes_per_tree + node;
  f.logits[record] = logit;
  // a balancing layer routes on logit + offset; the neuron's activation stays GELU(logit)
  const float decide = f.offset ? logit + f.offset[k * s.nodes_per_tree + node] : logit;
  return 2 * node + 1 + (decide > 0.0f);  // strict: 0 and NaN go left
}

template <typename T>
inline int64_t route(const Walk<T>& w, int64_t t, int64_t node, int64_t level, float logit) {
  return route(w.f, w.k, t, node, level, logit);
}

// Walks the tokens that were left alone on a node down to the segment's end, kSoloWalkers at a time: each step
// of a lone token waits on its own row (a cache miss on deep levels), so walking several side by side
// overlaps those misses.
template <typename T>
void walk_solos(const Walk<T>& w) {
  static_assert(kSoloWalkers == 4, "the dot product switch below handles 1 to 4 walkers");
  const Forward<T>& f = w.f;
  const Shape& s = f.s;
  std::array<int64_t, 3> walkers[kSoloWalkers];
  int active = 0;
  size_t queued = 0;
  const T* x[kSoloWalkers];
  const T* rows[kSoloWalkers];
  float z[kSoloWalkers];
  while (true) {
    while (active < kSoloWalkers && queued < w.solos.size()) walkers[active++] = w.solos[queued++];
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
  int64_t left = 0;
  int64_t right = 0;
  for (int64_t i = begin; i < begin + count; ++i) {
    const int64_t t = w.tokens[i];
    if (route(w, t, node, level, w.z[i] + bias) == 2 * node + 2) {
      w.spill[right] = t;
      w.spill_x[right] = w.x[i];
      ++right;
    } else {
      w.tokens[begin + left] = t;
      w.x[begin + left] = w.x[i];
      ++left;
    }
  }
  for (int64_t i = 0; i < right; ++i) {
    w.tokens[begin + left + i] = w.spill[i];
    w.x[begin + left + i] = w.spill_x[i];
  }
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

// Output rows of M tokens that share their whole path in tree k: Y (M x H) (+)= A (M x L) W (L x H), where A
// holds their GELU'd logits; each chunk of a weight row is loaded once for all M tokens.
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
    vfloat acc[M][kChunkVectors] = {};
    for (int64_t j = 0; j < levels; ++j) {
      const T* r = rows[j] + h;
      vfloat w[kChunkVectors];
      for (int q = 0; q < kChunkVectors; ++q) w[q] = load(r + q * kLanes);
      for (int m = 0; m < M; ++m) {
        const vfloat c = broadcast(coef[m * levels + j]);
        for (int q = 0; q < kChunkVectors; ++q) acc[m][q] += c * w[q];
      }
    }
    for (int m = 0; m < M; ++m) {
      for (int q = 0; q < kChunkVectors; ++q) sink_vector(sinks[m], h + q * kLanes, acc[m][q]);
    }
  }
  if (h < s.width) {
    for (int m = 0; m < M; ++m) combine_into(sinks[m], rows, coef + m * levels, levels, h, s.width);
  }
}

// Per-thread scratch, grown on demand and kept (thread_local) so that small calls do not allocate.
template <typename T>
struct Scratch {
  std::vector<const T*> x;
  std::vector<const T*> spill_x;
  std::vector<const T*> rows;
  std::vector<float> z;
  std::vector<float> coef;
  std::vector<int64_t> tokens;
  std::vector<int64_t> spill;
  std::vector<std::array<int64_t, 3>> solos;

  void reserve(int64_t group, int64_t levels) {
    if (static_cast<int64_t>(x.size()) < group) {
      x.resize(group);
      spill_x.resize(group);
      z.resize(group);
      tokens.resize(group);
      spill.resize(group);
    }
    if (static_cast<int64_t>(coef.size()) < group * levels) coef.resize(group * levels);
    if (static_cast<int64_t>(rows.size()) < levels) rows.resize(levels);
  }
};

// Adds tree k's contribution to the outputs of a walked group, run by run of tokens on one leaf.
template <typename T>
void combine_group(const Forward<T>& f, int64_t k, const int64_t* tokens, int64_t count, Scratch<T>& scratch) {
  static_assert(kLeafRunTokens == 4, "the combine switch below handles runs of 1 to 4 tokens");
  const Shape& s = f.s;
  const int64_t levels = s.levels();
  const int64_t path = s.path();
  const int64_t record = k * levels;
  const bool stream = std::is_same_v<T, float> && s.width % kLanes == 0 &&
                      reinterpret_cast<uintptr_t>(f.out) % kStreamAlignment == 0;
  // GELU of every logit of the group at once (vectors across tokens: enough independent work to pipeline)
  for (int64_t i = 0; i < count; ++i) {
    std::memcpy(scratch.coef.data() + i * levels, f.logits + tokens[i] * path + record, levels * sizeof(float));
  }
  map_floats(scratch.coef.data(), scratch.coef.data(), count * levels, [](vfloat z) { return gelu(z); });
  for (int64_t begin = 0; begin < count;) {
    const int64_t leaf = f.nodes[tokens[begin] * path + record + levels - 1];
    int64_t end = begin + 1;
    while (end < count && end - begin < kLeafRunTokens && f.nodes[tokens[end] * path + record + levels - 1] == leaf) {
      ++end;
    }
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

// A single token (batch-1 decoding) shares no row with another: every level is one dot product whose row comes
// from memory, and which row is next is known only when it is done, so the walk is a chain of dependent row
// fetches. Two measures keep memory busy along the chain: the output row of each visited node is started when
// the node is reached (the combine reads it only after the walk), and the next input row as soon as it is known;
// rows of at most kSpeculateRowBytes are not waited for at all: both children's rows are fetched during the
// parent's dot product, one of them in vain. At GPT-3 width (12288, depth 15, one thread, rows not in cache)
// fetching both children ahead made bfloat16 rows (24 KB) about 15% faster and float32 rows (48 KB) about 10%
// slower (four rows a level then reach the memory's bandwidth); starting every page of the next row at once made
// float32 about 10% faster (csrc/README.md, "What was tried").
constexpr int64_t kSpeculateRowBytes = 32 << 10;

// The walk of token 0 through tree k, recording its path; the combine (combine_group) follows.
template <typename T>
void walk_one_token(const Forward<T>& f, int64_t k) {
  const Shape& s = f.s;
  const int64_t row_bytes = s.width * static_cast<int64_t>(sizeof(T));
  const bool speculate = row_bytes <= kSpeculateRowBytes;
  const int64_t first = k * s.nodes_per_tree;  // tree k's first row
  const T* tree_in = f.w_in + first * s.width;
  const T* tree_out = f.w_out + first * s.width;
  int64_t node = 0;
  for (int64_t level = 0; level < s.levels(); ++level) {
    const bool deeper = level + 1 < s.levels();
    const T* row = tree_in + node * s.width;
    const T* out_row = tree_out + node * s.width;
    float z;
    if (speculate && deeper) {
      const T* ahead[3] = {tree_in + (2 * node + 1) * s.width, tree_in + (2 * node + 2) * s.width, out_row};
      z = dot_fetching_ahead<3>(f.x, row, s.width, ahead);
    } else {
      prefetch_page_heads(out_row, row_bytes);
      z = dot_fetching_ahead<0>(f.x, row, s.width, static_cast<const T* const*>(nullptr));
    }
    node = route(f, k, 0, node, level, z + to_float(f.b_in[first + node]));
    if (!speculate && deeper) prefetch_page_heads(tree_in + node * s.width, row_bytes);
  }
}

// One token through every tree, on the calling thread: no groups, no parallel region.
template <typename T>
void run_one_token(const Forward<T>& f) {
  static thread_local Scratch<T> scratch;
  scratch.reserve(1, f.s.levels());
  const int64_t token = 0;
  for (int64_t k = 0; k < f.s.trees; ++k) {
    walk_one_token(f, k);
    combine_group(f, k, &token, 1, scratch);
  }
}

// Levels per segment: as many as keep a subtree's input and output rows within kSegmentBytes.
int64_t segment_levels(int64_t row_bytes) {
  int64_t levels = 1;
  while (((int64_t{2} << levels) - 1) * 2 * row_bytes <= kSegmentBytes) ++levels;
  return levels;
}

// Tokens order[begin : begin + count] (or that range itself without an order), all on local node `start`.
struct Group {
  int64_t begin;
  int64_t count;
  int64_t start;
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
    const Walk<T> walk{f,         k,         first,         last,            scratch.tokens.data(),
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
  const int64_t chunk = std::max<int64_t>(1, count / (kGroupChunksPerThread * threads));
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
  const int64_t count =
      std::max((tokens + kGroupTokens - 1) / kGroupTokens, std::min(threads, tokens / kMinGroupTokens));
  std::vector<Group> groups;
  groups.reserve(count);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t begin = tokens * i / count;
    const int64_t end = tokens * (i + 1) / count;
    if (end > begin) groups.push_back({begin, end - begin, 0});
  }
  return groups;
}

// Groups of the tokens bucketed by the subtree (local node on level `first`) each entered: `order` receives
// the tokens sorted by bucket (a stable counting sort); buckets larger than kBucketGroupTokens are split.
std::vector<Group> bucket_groups(const int64_t* exit_local, int64_t tokens, int64_t first, int64_t* order) {
  const int64_t level_start = (int64_t{1} << first) - 1;
  const int64_t buckets = int64_t{1} << first;
  std::vector<int64_t> counts(buckets + 1, 0);
  for (int64_t t = 0; t < tokens; ++t) ++counts[exit_local[t] - level_start + 1];
  for (int64_t b = 0; b < buckets; ++b) counts[b + 1] += counts[b];
  std::vector<Group> groups;
  for (int64_t b = 0; b < buckets; ++b) {
    const int64_t size = counts[b + 1] - counts[b];
    const int64_t parts = (size + kBucketGroupTokens - 1) / kBucketGroupTokens;
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t begin = counts[b] + size * p / parts;
      const int64_t end = counts[b] + size * (p + 1) / parts;
      groups.push_back({begin, end - begin, level_start + b});
    }
  }
  for (int64_t t = 0; t < tokens; ++t) order[counts[exit_local[t] - level_start]++] = t;
  return groups;
}

// The schedule: per tree, all tokens walk the top segment from the root in even groups; each later segment is
// walked bucket by bucket; the outputs are combined after the last segment.
template <typename T>
void run_schedule(const Forward<T>& f) {
  const Shape& s = f.s;
  if (s.tokens == 0) return;
  if (s.tokens == 1) {
    run_one_token(f);
    return;
  }
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

}  // namespace

template <typename T>
void forward(const ForwardArgs<T>& args) {
  const Shape& s = args.s;
  const bool bucketed =
      s.tokens >= kBucketMinTokens && s.levels() > segment_levels(s.width * static_cast<int64_t>(sizeof(T)));
  std::vector<int64_t> exit_local(bucketed ? s.tokens : 0);
  const Forward<T> f{args.x,
                     args.weight_in,
                     args.bias_in,
                     args.weight_out_t,
                     args.out,
                     args.acc,
                     args.nodes,
                     args.logits,
                     args.routing_offset,
                     bucketed ? exit_local.data() : nullptr,
                     s};
  run_schedule(f);
}

template void forward<float>(const ForwardArgs<float>&);
template void forward<bf16>(const ForwardArgs<bf16>&);

}  // namespace ultrafastbert::fff
