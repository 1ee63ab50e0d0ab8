// The lean engine's ops as compiled autograd Functions (odtkit.engine.native builds and
// loads this file, with odtkit/compress/csrc/dense_ops.cpp, as one extension module;
// odtkit.engine._ops holds the same ops in Python, the fallback).
//
// Each op does what its Python twin in _ops.py does, with the same ATen calls where it
// calls ATen (so gradients, kept tensors and the allocations torch's allocator sees are
// the same), but without a Python frame per call: at batch 1 that frame is most of what a
// lean step costs beyond a stock one. The clamp mask is written as bits straight from the
// output (numpy.packbits order: element 8j + i is bit 7 - i of byte j) and read back in
// backward without a temporary of input size.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/extension.h>

#include <array>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ------------------------------------------------------------------ clamp masks

// bits of lo < y < hi for a contiguous y (a NaN is blocked, as in the vectorized body of
// torch's hardtanh_backward); no hi: !(y <= lo) (a NaN passes, as in threshold_backward)
// On a little-endian word of eight 0/1 bytes, multiplying by kSpread moves byte i to bit
// 63 - i with no carries, so its top byte holds element i at bit 7 - i: packbits order.
constexpr uint64_t kSpread = 0x8040201008040201ULL;
constexpr uint64_t kLowBits = 0x0101010101010101ULL;

// bits of lo < y < hi for a contiguous y (a NaN is blocked, as in the vectorized body of
// torch's hardtanh_backward); no hi: !(y <= lo) (a NaN passes, as in threshold_backward)
template <typename scalar_t, bool kHasHi>
void pack_pass(const scalar_t* y, int64_t n, scalar_t lo_s, scalar_t hi_s, uint8_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t lo = static_cast<acc_t>(lo_s), hi = static_cast<acc_t>(hi_s);
  const int64_t full = n / 8;
  for (int64_t j = 0; j < full; ++j) {
    uint8_t flags[8];
    for (int i = 0; i < 8; ++i) {
      const acc_t v = static_cast<acc_t>(y[8 * j + i]);
      flags[i] = kHasHi ? ((v > lo) & (v < hi)) : !(v <= lo);
    }
    uint64_t word;
    std::memcpy(&word, flags, 8);
    out[j] = static_cast<uint8_t>((word * kSpread) >> 56);
  }
  if (n % 8) {
    uint8_t byte = 0;
    for (int64_t k = 8 * full; k < n; ++k) {
      const acc_t v = static_cast<acc_t>(y[k]);
      const bool pass = kHasHi ? (v > lo && v < hi) : !(v <= lo);
      byte |= static_cast<uint8_t>(pass) << (7 - (k - 8 * full));
    }
    out[full] = byte;
  }
}

// out = g * bit (0 or 1), g and out contiguous
template <typename scalar_t>
void apply_mask(const scalar_t* g, const uint8_t* packed, int64_t n, scalar_t* out) {
  const int64_t full = n / 8;
  for (int64_t j = 0; j < full; ++j) {
    // byte j's bit 7 - i to byte i of a little-endian word, as 0/1
    const uint64_t word = ((static_cast<uint64_t>(packed[j]) * kSpread) >> 7) & kLowBits;
    uint8_t flags[8];
    std::memcpy(flags, &word, 8);
    for (int i = 0; i < 8; ++i) {
      out[8 * j + i] = g[8 * j + i] * static_cast<scalar_t>(flags[i]);
    }
  }
  for (int64_t k = 8 * full; k < n; ++k) {
    const int bit = (packed[full] >> (7 - (k - 8 * full))) & 1;
    out[k] = g[k] * static_cast<scalar_t>(bit);
  }
}

at::Tensor pack_clamp_mask(const at::Tensor& y_in, double lo, std::optional<double> hi) {
  const at::Tensor y = y_in.contiguous();
  const int64_t n = y.numel();
  at::Tensor packed = at::empty({(n + 7) / 8}, y.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "pack_clamp_mask", [&] {
    const scalar_t* src = y.const_data_ptr<scalar_t>();
    uint8_t* dst = packed.mutable_data_ptr<uint8_t>();
    if (hi.has_value()) {
      pack_pass<scalar_t, true>(src, n, static_cast<scalar_t>(lo), static_cast<scalar_t>(*hi), dst);
    } else {
      pack_pass<scalar_t, false>(src, n, static_cast<scalar_t>(lo), scalar_t(0), dst);
    }
  });
  return packed;
}

struct ClampMask : public torch::autograd::Function<ClampMask> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor x, double lo,
                            std::optional<double> hi, bool inplace) {
    at::Tensor y;
    if (inplace) {
      ctx->mark_dirty({x});
      y = hi.has_value() ? x.clamp_(lo, *hi) : x.clamp_(lo);
    } else {
      y = hi.has_value() ? x.clamp(lo, *hi) : x.clamp(lo);
    }
    ctx->save_for_backward({pack_clamp_mask(y, lo, hi)});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor packed = ctx->get_saved_variables()[0];
    const at::Tensor& grad = grads[0];
    at::Tensor gx;
    if (grad.is_contiguous() && grad.device().is_cpu()) {
      gx = at::empty_like(grad, at::MemoryFormat::Contiguous);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "clamp_mask_backward", [&] {
        apply_mask<scalar_t>(grad.const_data_ptr<scalar_t>(), packed.const_data_ptr<uint8_t>(),
                             grad.numel(), gx.mutable_data_ptr<scalar_t>());
      });
    } else {  // a strided gradient: unpack into a 0/1 tensor of its dtype, then multiply
      const int64_t n = grad.numel();
      at::Tensor bits = at::arange(7, -1, -1, packed.options());
      at::Tensor mask = packed.unsqueeze(1).bitwise_right_shift(bits).bitwise_and_(1)
                            .reshape({-1}).narrow(0, 0, n).view(grad.sizes());
      gx = grad * mask.to(grad.scalar_type());
    }
    return {gx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor clamp_mask(const at::Tensor& x, double lo, std::optional<double> hi, bool inplace) {
  return ClampMask::apply(x, lo, hi, inplace);
}

// ------------------------------------------------------------------ convolution

bool pointwise(const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
               int64_t groups) {
  if (groups != 1) return false;
  for (int64_t d = 2; d < weight.dim(); ++d)
    if (weight.size(d) != 1) return false;
  for (auto s : stride)
    if (s != 1) return false;
  for (auto p : padding)
    if (p != 0) return false;
  return true;
}

at::Tensor conv_nd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                   int64_t groups) {
  const std::optional<at::Tensor> bias = b.defined() ? std::optional<at::Tensor>(b) : std::nullopt;
  switch (x.dim()) {
    case 3: return at::conv1d(x, w, bias, stride, padding, dilation, groups);
    case 4: return at::conv2d(x, w, bias, stride, padding, dilation, groups);
    default: return at::conv3d(x, w, bias, stride, padding, dilation, groups);
  }
}

struct ConvNoInput : public torch::autograd::Function<ConvNoInput> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor x, at::Tensor weight,
                            std::optional<at::Tensor> bias, std::vector<int64_t> stride,
                            std::vector<int64_t> padding, std::vector<int64_t> dilation,
                            int64_t groups) {
    // one list for backward: has_bias, groups, stride, padding, dilation, the input's shape
    std::vector<int64_t> conf = {bias.has_value() ? 1 : 0, groups};
    conf.insert(conf.end(), stride.begin(), stride.end());
    conf.insert(conf.end(), padding.begin(), padding.end());
    conf.insert(conf.end(), dilation.begin(), dilation.end());
    conf.insert(conf.end(), x.sizes().begin(), x.sizes().end());
    ctx->saved_data["conf"] = std::move(conf);
    ctx->save_for_backward({ctx->needs_input_grad(1) ? x : at::Tensor(), weight});
    return conv_nd(x, weight, bias.value_or(at::Tensor()), stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& grad = grads[0];
    const auto conf = ctx->saved_data["conf"].toIntVector();
    const size_t nd = static_cast<size_t>(weight.dim() - 2);
    const std::vector<int64_t> stride(conf.begin() + 2, conf.begin() + 2 + nd);
    const std::vector<int64_t> padding(conf.begin() + 2 + nd, conf.begin() + 2 + 2 * nd);
    const std::vector<int64_t> dilation(conf.begin() + 2 + 2 * nd, conf.begin() + 2 + 3 * nd);
    const std::vector<int64_t> in_shape(conf.begin() + 2 + 3 * nd, conf.end());
    const int64_t groups = conf[1];
    // an absent bias is no input of the Function's node: it has no edge to ask about
    const bool has_bias = conf[0] != 0;
    const std::array<bool, 3> need = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    const std::vector<int64_t> zeros(stride.size(), 0);
    at::Tensor gx, gw, gb;
    if (!x.defined()) {  // frozen weight: nothing of the input is needed
      if (need[0] && pointwise(weight, stride, padding, groups)) {
        // torch's convolution_backward on a shape-only stand-in (a stride-0 view of one
        // weight element; its data goes unread)
        const at::Tensor stand_in = weight.as_strided({1}, {1}).expand(in_shape);
        gx = std::get<0>(at::convolution_backward(grad, stand_in, weight, std::nullopt, stride,
                                                  padding, dilation, false, zeros, groups,
                                                  {true, false, false}));
      } else if (need[0]) {
        std::vector<int64_t> extra;  // output padding that restores the input's size
        for (size_t d = 0; d < stride.size(); ++d) {
          const int64_t o = grad.size(d + 2), k = weight.size(d + 2);
          extra.push_back(in_shape[d + 2] -
                          ((o - 1) * stride[d] - 2 * padding[d] + dilation[d] * (k - 1) + 1));
        }
        // the transposed convolution of dy (what conv_transpose1d/2d/3d call)
        gx = at::convolution(grad, weight, std::nullopt, stride, padding, dilation, true, extra,
                             groups);
      }
      if (need[2]) {
        std::vector<int64_t> dims = {0};
        for (int64_t d = 2; d < grad.dim(); ++d) dims.push_back(d);
        gb = grad.sum(dims);
      }
    } else {
      std::optional<std::vector<int64_t>> bias_sizes;
      if (need[2]) bias_sizes = std::vector<int64_t>{weight.size(0)};
      auto out = at::convolution_backward(
          grad, x, weight,
          bias_sizes.has_value() ? at::OptionalIntArrayRef(*bias_sizes) : at::OptionalIntArrayRef(),
          stride, padding, dilation, false, zeros, groups, need);
      gx = std::get<0>(out);
      gw = std::get<1>(out);
      gb = std::get<2>(out);
    }
    return {gx, gw, gb, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor conv(const at::Tensor& x, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias, std::vector<int64_t> stride,
                std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups) {
  return ConvNoInput::apply(x, weight, bias, std::move(stride), std::move(padding),
                            std::move(dilation), groups);
}

// ------------------------------------------------------------------ linear

struct LinearNoInput : public torch::autograd::Function<LinearNoInput> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor x, at::Tensor weight,
                            std::optional<at::Tensor> bias) {
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->save_for_backward({ctx->needs_input_grad(1) ? x : at::Tensor(), weight});
    return at::linear(x, weight, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& grad = grads[0];
    const at::Tensor g2 = grad.reshape({-1, grad.size(-1)});  // (rows, out)
    at::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) gx = at::matmul(grad, weight);  // (..., in)
    if (ctx->needs_input_grad(1)) gw = at::matmul(g2.t(), x.reshape({-1, x.size(-1)}));
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) gb = g2.sum(0);
    return {gx, gw, gb};
  }
};

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias) {
  return LinearNoInput::apply(x, weight, bias);
}

// ------------------------------------------------------------------ frozen batch norm

struct BatchNormFrozen : public torch::autograd::Function<BatchNormFrozen> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor x, std::optional<at::Tensor> weight,
                            std::optional<at::Tensor> bias, at::Tensor mean, at::Tensor var,
                            double eps) {
    ctx->saved_data["eps"] = eps;
    // the edge of the bias, if any: after x and the weight, if any
    ctx->saved_data["bias_edge"] = bias.has_value() ? (weight.has_value() ? 2 : 1) : -1;
    ctx->save_for_backward({weight.value_or(at::Tensor()), mean, var});
    return at::batch_norm(x, weight, bias, mean, var, false, 0.0, eps,
                          at::globalContext().userEnabledCuDNN());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grads[0];
    const double eps = ctx->saved_data["eps"].toDouble();
    const int64_t bias_edge = ctx->saved_data["bias_edge"].toInt();
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_b = bias_edge >= 0 && ctx->needs_input_grad(bias_edge);
    auto opt = [](const at::Tensor& t) {
      return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
    };
    // grad stands in for the input: same shape and layout, and its data goes unread
    auto out = at::native_batch_norm_backward(grad, grad, opt(saved[0]), opt(saved[1]),
                                              opt(saved[2]), std::nullopt, std::nullopt, false,
                                              eps, {need_x, false, need_b});
    return {std::get<0>(out), at::Tensor(), std::get<2>(out), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor batch_norm_frozen(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias, const at::Tensor& mean,
                             const at::Tensor& var, double eps) {
  return BatchNormFrozen::apply(x, weight, bias, mean, var, eps);
}

// ------------------------------------------------------------------ max pooling

// 2-d max pooling (dilation 1) keeping, per output, the argmax's position within its window
// as uint8 (kh*kw <= 256 positions) where torch keeps an int64 index into the input plane.
// Output (oh, ow) has its window's top-left corner at (h0, w0) = (oh*sh - ph, ow*sw - pw);
// index i = ih*W + iw <-> position (ih - h0)*kw + (iw - w0). One loop each way, no
// temporary but the index torch's kernels take: the same tensors as MaxPoolIndex in
// _ops_act.py, which does the arithmetic with numpy.
// Calls visit(k, h0, w0) for every output k of an (..., OH, OW) pooling result, in memory
// order, with (h0, w0) the top-left corner of its window (padding included).
template <typename Visit>
void for_each_window(const at::Tensor& t, const std::vector<int64_t>& stride,
                     const std::vector<int64_t>& padding, Visit visit) {
  const int64_t oh_n = t.size(-2), ow_n = t.size(-1);
  const int64_t planes = oh_n * ow_n == 0 ? 0 : t.numel() / (oh_n * ow_n);
  for (int64_t p = 0, k = 0; p < planes; ++p) {
    for (int64_t oh = 0; oh < oh_n; ++oh) {
      const int64_t h0 = oh * stride[0] - padding[0];
      for (int64_t ow = 0; ow < ow_n; ++ow, ++k) visit(k, h0, ow * stride[1] - padding[1]);
    }
  }
}

struct MaxPoolIndex : public torch::autograd::Function<MaxPoolIndex> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor x, std::vector<int64_t> kernel,
                            std::vector<int64_t> stride, std::vector<int64_t> padding,
                            bool ceil_mode) {
    auto [out, idx_any] = at::max_pool2d_with_indices(x, kernel, stride, padding, {1, 1},
                                                      ceil_mode);
    const at::Tensor idx = idx_any.contiguous();
    const int64_t width = x.size(-1);
    at::Tensor local = at::empty(idx.sizes(), idx.options().dtype(at::kByte));
    const int64_t* src = idx.const_data_ptr<int64_t>();
    uint8_t* dst = local.mutable_data_ptr<uint8_t>();
    for_each_window(idx, stride, padding, [&](int64_t k, int64_t h0, int64_t w0) {
      const int64_t ih = src[k] / width, iw = src[k] - ih * width;
      dst[k] = static_cast<uint8_t>((ih - h0) * kernel[1] + iw - w0);
    });
    // one list for backward: ceil_mode, kernel, stride, padding (2 each), the input's shape
    std::vector<int64_t> conf = {ceil_mode ? 1 : 0, kernel[0], kernel[1], stride[0], stride[1],
                                 padding[0], padding[1]};
    conf.insert(conf.end(), x.sizes().begin(), x.sizes().end());
    ctx->saved_data["conf"] = std::move(conf);
    ctx->save_for_backward({local});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor local = ctx->get_saved_variables()[0];
    const at::Tensor& grad = grads[0];
    const auto conf = ctx->saved_data["conf"].toIntVector();
    const std::vector<int64_t> kernel(conf.begin() + 1, conf.begin() + 3);
    const std::vector<int64_t> stride(conf.begin() + 3, conf.begin() + 5);
    const std::vector<int64_t> padding(conf.begin() + 5, conf.begin() + 7);
    const std::vector<int64_t> in_shape(conf.begin() + 7, conf.end());
    const int64_t width = in_shape.back();
    at::Tensor idx = at::empty(local.sizes(), local.options().dtype(at::kLong));
    const uint8_t* src = local.const_data_ptr<uint8_t>();
    int64_t* dst = idx.mutable_data_ptr<int64_t>();
    for_each_window(local, stride, padding, [&](int64_t k, int64_t h0, int64_t w0) {
      const int64_t pos = src[k], r = pos / kernel[1];
      dst[k] = (h0 + r) * width + w0 + pos - r * kernel[1];
    });
    const at::Tensor stand_in = grad.new_empty({1}).expand(in_shape);  // its data goes unread
    at::Tensor gx = at::max_pool2d_with_indices_backward(
        grad, stand_in, kernel, stride, padding, {1, 1}, conf[0] != 0, idx);
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor max_pool_index(const at::Tensor& x, std::vector<int64_t> kernel,
                          std::vector<int64_t> stride, std::vector<int64_t> padding,
                          bool ceil_mode) {
  return MaxPoolIndex::apply(x, std::move(kernel), std::move(stride), std::move(padding),
                             ceil_mode);
}

// the dense codecs' ops (odtkit/compress/csrc/dense_ops.cpp, built into the same module)
std::optional<std::tuple<at::Tensor, bool>> cast_checked(const at::Tensor& x, bool bfloat16);
at::Tensor uncast(const at::Tensor& payload, at::IntArrayRef shape);
std::optional<at::Tensor> flat_copy(const at::Tensor& x);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("clamp_mask", &clamp_mask, "clamp keeping a bit mask (in place or not)");
  m.def("conv", &conv, "convolution keeping its input only when the weight trains");
  m.def("linear", &linear, "linear keeping its input only when the weight trains");
  m.def("batch_norm_frozen", &batch_norm_frozen, "eval-mode batch norm, frozen weight");
  m.def("max_pool_index", &max_pool_index, "2-d max pooling keeping a uint8 window index");
  m.def("cast_checked", &cast_checked, "float32 -> flat float16/bfloat16, and whether any "
        "entry came out inf or NaN; None unless a plain contiguous CPU float32 tensor");
  m.def("uncast", &uncast, "float16/bfloat16 -> float32 in the given shape");
  m.def("flat_copy", &flat_copy, "a flat copy of its own; None unless a plain contiguous CPU "
        "tensor of a float dtype");
}
