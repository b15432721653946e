// The interface between the op entry points (registration.cpp: tensors, checks, allocation) and the kernels
// (forward.cpp, backward.cpp: raw pointers, no tensors): the layer's shape, the typed kernel entry points, and
// the one dtype dispatch that selects them.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "vec.h"

namespace ultrafastbert::fff {

// Sizes of one call: N tokens of width H through K trees of depth D (nodes_per_tree = 2**(D+1) - 1).
struct Shape {
  int64_t tokens;
  int64_t width;
  int64_t depth;
  int64_t trees;
  int64_t nodes_per_tree;
  int64_t levels() const { return depth + 1; }
  int64_t path() const { return trees * (depth + 1); }  // visited nodes per token
};

// Calls fn(T{}) with T the element type of `dtype`: float for float32, bf16 otherwise (the input checks admit
// only those two). Every kernel is a template over T, instantiated for both and reached through here.
template <typename Fn>
void dispatch_dtype(c10::ScalarType dtype, Fn&& fn) {
  if (dtype == c10::ScalarType::Float) {
    fn(float{});
  } else {
    fn(bf16{});
  }
}

// The contiguous buffers of one forward; n = nodes_per_tree.
template <typename T>
struct ForwardArgs {
  const T* x;             // (N, H)
  const T* weight_in;     // (K * n, H)
  const T* bias_in;       // (K * n,)
  const T* weight_out_t;  // (K * n, H)
  T* out;                 // (N, H)
  float* acc;             // (N, H) float32 accumulator across trees (`out` itself for float32); nullptr for one tree
  int64_t* nodes;         // (N, K, D+1) receives the global index of every visited node
  float* logits;          // (N, K, D+1) receives the logit at every visited node
  const float* routing_offset;  // (K * n,) float32 added to the logits to route (balanced trees), or nullptr
  Shape s;
};

// The output of every token, and the path records the backward needs. forward.cpp.
template <typename T>
void forward(const ForwardArgs<T>& args);

// All four gradients, from the nodes and logits the forward recorded; every element of every gradient is
// written (rows no token visited get zeros). grad_w_out (K * n, H) is scratch for the weight_out_t gradient,
// which is returned in grad_w_out_t stored transposed: element (row, h) at h * K * n + row. backward.cpp.
template <typename T>
void backward(const T* grad_out, const T* x, const T* w_in, const T* w_out, const int64_t* nodes, const float* logits,
              const Shape& s, T* grad_x, T* grad_w_in, T* grad_b_in, T* grad_w_out, T* grad_w_out_t);

}  // namespace ultrafastbert::fff
