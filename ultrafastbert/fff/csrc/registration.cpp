// The CPU implementations of the ultrafastbert::fff_* operators: input checks, output allocation, the dtype
// dispatch into the kernels, and their registration with torch.library.
//
// The operator schemas are defined in Python (ultrafastbert/fff/ops.py, with their fake and autograd
// registrations), so the ops exist (for tracing, fake tensors) even where this library cannot be compiled. Keep
// the error messages here byte-identical to those of the fake implementations there: change them together.

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "buffer_pool.h"
#include "kernel.h"

namespace ultrafastbert::fff {
namespace {

constexpr int64_t kMaxDepth = 24;  // deepest tree accepted: 2**25 - 1 nodes per tree

Shape check_shapes(const at::Tensor& x, const at::Tensor& weight_in, const at::Tensor& weight_out_t, int64_t depth,
                   int64_t trees) {
  TORCH_CHECK(x.dim() == 2, "fff: x must be (N, H), got ", x.sizes());
  TORCH_CHECK(depth >= 0 && depth <= kMaxDepth && trees >= 1, "fff: need 0 <= depth <= ", kMaxDepth,
              " and trees >= 1");
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

// The checked, contiguous inputs of a forward.
struct ForwardInputs {
  at::Tensor x;
  at::Tensor weight_in;
  at::Tensor bias_in;
  at::Tensor weight_out_t;
  Shape s;
};

ForwardInputs prepare_forward(const at::Tensor& x, const at::Tensor& weight_in, const at::Tensor& bias_in,
                              const at::Tensor& weight_out_t, int64_t depth, int64_t trees) {
  ForwardInputs in{contiguous(x), contiguous(weight_in), contiguous(bias_in), contiguous(weight_out_t), {}};
  in.s = check_shapes(in.x, in.weight_in, in.weight_out_t, depth, trees);
  TORCH_CHECK(in.bias_in.dim() == 1 && in.bias_in.size(0) == in.weight_in.size(0) &&
                  in.bias_in.scalar_type() == in.x.scalar_type(),
              "fff: bias_in must be (", in.weight_in.size(0), ",) of the weights' dtype");
  return in;
}

// The routing offsets' data, checked against the layer (nullptr without them).
const float* routing_offset_data(const std::optional<at::Tensor>& routing_offset, const Shape& s) {
  if (!routing_offset.has_value()) return nullptr;
  const at::Tensor& offset = *routing_offset;
  TORCH_CHECK(offset.dim() == 1 && offset.size(0) == s.trees * s.nodes_per_tree && offset.scalar_type() == at::kFloat,
              "fff: routing_offset must be (", s.trees * s.nodes_per_tree, ",) float32");
  TORCH_CHECK(offset.device().is_cpu() && offset.is_contiguous(), "fff: routing_offset must be a contiguous CPU tensor");
  return offset.data_ptr<float>();
}

void run_forward(const ForwardInputs& in, at::Tensor& out, int64_t* nodes, float* logits, const float* offset) {
  const Shape& s = in.s;
  // with several trees, outputs accumulate in float32 across trees (in `out` itself for float32)
  at::Tensor acc;
  if (in.x.scalar_type() != at::kFloat && s.trees > 1) {
    acc = pooled_empty({s.tokens, s.width}, in.x.options().dtype(at::kFloat));
  }
  dispatch_dtype(in.x.scalar_type(), [&](auto type_tag) {
    using T = decltype(type_tag);
    float* acc_data = nullptr;
    if (s.trees > 1) acc_data = acc.defined() ? acc.data_ptr<float>() : reinterpret_cast<float*>(out.data_ptr<T>());
    forward<T>(ForwardArgs<T>{in.x.data_ptr<T>(), in.weight_in.data_ptr<T>(), in.bias_in.data_ptr<T>(),
                              in.weight_out_t.data_ptr<T>(), out.data_ptr<T>(), acc_data, nodes, logits, offset,
                              s});
  });
}

at::Tensor fff_infer_cpu(const at::Tensor& x, const at::Tensor& weight_in, const at::Tensor& bias_in,
                         const at::Tensor& weight_out_t, int64_t depth, int64_t trees,
                         const std::optional<at::Tensor>& routing_offset) {
  const ForwardInputs in = prepare_forward(x, weight_in, bias_in, weight_out_t, depth, trees);
  const float* offset = routing_offset_data(routing_offset, in.s);
  at::Tensor out = pooled_empty({in.s.tokens, in.s.width}, in.x.options());
  static thread_local std::vector<int64_t> nodes;  // the path records are scratch here
  static thread_local std::vector<float> logits;
  const int64_t records = in.s.tokens * in.s.path();
  if (static_cast<int64_t>(nodes.size()) < records) {
    nodes.resize(records);
    logits.resize(records);
  }
  run_forward(in, out, nodes.data(), logits.data(), offset);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fff_forward_cpu(const at::Tensor& x, const at::Tensor& weight_in,
                                                                 const at::Tensor& bias_in,
                                                                 const at::Tensor& weight_out_t, int64_t depth,
                                                                 int64_t trees,
                                                                 const std::optional<at::Tensor>& routing_offset) {
  const ForwardInputs in = prepare_forward(x, weight_in, bias_in, weight_out_t, depth, trees);
  const float* offset = routing_offset_data(routing_offset, in.s);
  at::Tensor out = pooled_empty({in.s.tokens, in.s.width}, in.x.options());
  at::Tensor nodes = pooled_empty({in.s.tokens, in.s.trees, in.s.levels()}, in.x.options().dtype(at::kLong));
  at::Tensor logits = pooled_empty({in.s.tokens, in.s.trees, in.s.levels()}, in.x.options().dtype(at::kFloat));
  run_forward(in, out, nodes.data_ptr<int64_t>(), logits.data_ptr<float>(), offset);
  return {out, nodes, logits};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fff_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& x_, const at::Tensor& weight_in_, const at::Tensor& weight_out_t_,
    const at::Tensor& nodes_, const at::Tensor& logits_) {
  const at::Tensor grad_out = contiguous(grad_out_);
  const at::Tensor x = contiguous(x_);
  const at::Tensor weight_in = contiguous(weight_in_);
  const at::Tensor weight_out_t = contiguous(weight_out_t_);
  const at::Tensor nodes = contiguous(nodes_);
  const at::Tensor logits = contiguous(logits_);
  TORCH_CHECK(nodes.dim() == 3 && nodes.scalar_type() == at::kLong, "fff_backward: nodes must be (N, K, D+1) int64");
  TORCH_CHECK(logits.sizes() == nodes.sizes() && logits.scalar_type() == at::kFloat,
              "fff_backward: logits must be float32 shaped like nodes");
  const Shape s = check_shapes(x, weight_in, weight_out_t, nodes.size(2) - 1, nodes.size(1));
  TORCH_CHECK(nodes.size(0) == s.tokens && grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type(),
              "fff_backward: grad_out, x, nodes must agree on (N, H) and dtype");
  at::Tensor grad_x = pooled_empty(x.sizes(), x.options());
  at::Tensor grad_w_in = pooled_empty(weight_in.sizes(), weight_in.options());
  at::Tensor grad_b_in = pooled_empty({weight_in.size(0)}, weight_in.options());
  // stored transposed, as linear_out.weight is: (K * n, H) with strides (1, K * n) (see backward.cpp)
  at::Tensor grad_w_out_t = pooled_empty({s.width, weight_out_t.size(0)}, weight_out_t.options()).t();
  at::Tensor grad_w_out_rows = pooled_empty(weight_out_t.sizes(), weight_out_t.options());  // scratch, row-major
  dispatch_dtype(x.scalar_type(), [&](auto type_tag) {
    using T = decltype(type_tag);
    backward<T>(grad_out.data_ptr<T>(), x.data_ptr<T>(), weight_in.data_ptr<T>(), weight_out_t.data_ptr<T>(),
                nodes.data_ptr<int64_t>(), logits.data_ptr<float>(), s, grad_x.data_ptr<T>(), grad_w_in.data_ptr<T>(),
                grad_b_in.data_ptr<T>(), grad_w_out_rows.data_ptr<T>(), grad_w_out_t.data_ptr<T>());
  });
  return {grad_x, grad_w_in, grad_b_in, grad_w_out_t};
}

}  // namespace
}  // namespace ultrafastbert::fff

TORCH_LIBRARY_IMPL(ultrafastbert, CPU, m) {
  m.impl("fff_infer", &ultrafastbert::fff::fff_infer_cpu);
  m.impl("fff_forward", &ultrafastbert::fff::fff_forward_cpu);
  m.impl("fff_backward", &ultrafastbert::fff::fff_backward_cpu);
}
