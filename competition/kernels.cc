// CPU kernels registered as Paddle custom operators: oneDNN convolutions and batch norms, 2x2 max
// pooling.
//
// Why: Paddle 3.3's CPU conv kernel runs im2col + GEMM image by image; in the cnn model it took
// ~80% of a training step and made an epoch 2.2x slower than PyTorch's (BENCHMARKS.md). oneDNN's
// convolution primitives (the library inside Paddle's own wheel) do the same arithmetic about 2x
// faster. Built once by competition/kernels.py; the Python side falls back to Paddle's conv.
//
// onednn_conv2d(X, W, stride, padding, need_dx, bf16, blocked, bf16_out): float32 (or, from these kernels,
// bfloat16) X, square stride and padding, no dilation, no groups, no bias (every conv here feeds a
// BatchNorm). With bf16 the primitives read bfloat16 copies of their inputs (X, W, the output gradient)
// and sum in float32 into float32 outputs (bfloat16 with bf16_out, below): on CPUs with AVX512-BF16 a
// resnet training step took 292 ms instead of 468 ms. Its second
// output, XRead, is X as the forward read it (the bfloat16 copy), kept for the weight gradient.
//
// blocked: in training and validation, activations with a multiple of 16 channels pass between these
// kernels in oneDNN's nChw16c layout (16 channels innermost; as many floats as NCHW, so Paddle's
// element-wise ReLU, GELU and add work on them unchanged) instead of being reordered to NCHW and back
// around every op. Reorders were 31% of oneDNN's time in a resnet 32x2 step (ONEDNN_VERBOSE,
// 2026-11-30). onednn_batch_norm (batch statistics), onednn_batch_norm_infer (running statistics) and
// max_pool2x2 take that layout too; onednn_to_plain turns it back to NCHW.
//
// bf16_out (CpuKernels.bf16_activations, with bf16 and blocked): training convs write bfloat16, and the
// batch norms, ReLU, GELU, pooling, the residual add (onednn_add_relu) and fork take and give bfloat16, their
// gradients too, as PyTorch's bfloat16 autocast keeps activations. Statistics, weights and their gradients
// stay float32. A resnet 32x2 step of 64 images on one core took 88 ms instead of 107 ms (2026-12-01): no
// float32 -> bfloat16 casts before the convs, half the bytes in every other pass, and Paddle's relu and
// add (float32 only) replaced by oneDNN's.
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "paddle/extension.h"

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

// Output rows (or columns) of a convolution: no dilation, symmetric padding.
int64_t out_size(int64_t in, int64_t kernel, int stride, int pad) { return (in + 2 * pad - kernel) / stride + 1; }

// How an activation with `channels` channels is laid out: nChw16c in the blocked training path when the
// channels fill whole blocks of 16 (the same size as NCHW), NCHW otherwise.
bool is_blocked(int64_t channels, bool blocked) { return blocked && channels % 16 == 0; }
tag layout(int64_t channels, bool blocked) { return is_blocked(channels, blocked) ? tag::nChw16c : tag::nchw; }

dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

struct Conv {
  memory::desc src, wei, dst;  // plain layouts: what Paddle hands over
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_weights::primitive_desc bwd_wei_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_wei;
};

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, bool, bool, dt, dt>;

// `x_type` and `out_type` are X's and Out's element types (float32, or bfloat16 activations); the
// gradients have the same types as what they are gradients of.
Conv& get_conv(const std::vector<int64_t>& x, const std::vector<int64_t>& w, int stride, int pad, bool bf16,
               bool blocked, dt x_type, dt out_type) {
  static std::map<Key, std::unique_ptr<Conv>> cache;
  static std::mutex lock;
  std::lock_guard<std::mutex> guard(lock);
  Key key{x[0], x[1], x[2], x[3], w[0], w[2], w[3], stride, pad, bf16, blocked, x_type, out_type};
  auto found = cache.find(key);
  if (found != cache.end()) return *found->second;
  auto& eng = cpu_engine();
  int64_t oh = out_size(x[2], w[2], stride, pad), ow = out_size(x[3], w[3], stride, pad);
  auto c = std::make_unique<Conv>();
  c->src = memory::desc({x[0], x[1], x[2], x[3]}, x_type, layout(x[1], blocked));
  c->wei = memory::desc({w[0], w[1], w[2], w[3]}, dt::f32, tag::oihw);
  c->dst = memory::desc({x[0], w[0], oh, ow}, out_type, layout(w[0], blocked));
  memory::dims strides{stride, stride}, pads{pad, pad};
  // `any` lets oneDNN pick its blocked layouts: plain NCHW primitives measured ~16x slower.
  auto any = [](const memory::desc& md, dt type) { return memory::desc(md.get_dims(), type, tag::any); };
  auto s = any(c->src, x_type), wd = any(c->wei, dt::f32), d = any(c->dst, out_type);
  // What each primitive reads: bfloat16 copies when asked (the weight gradient stays float32).
  dt in = bf16 ? dt::bf16 : dt::f32;
  auto s_in = any(c->src, in), w_in = any(c->wei, in), d_in = any(c->dst, in);
  c->fwd_pd = dnnl::convolution_forward::primitive_desc(eng, dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, s_in, w_in, d, strides, pads, pads);
  c->bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(eng, dnnl::algorithm::convolution_direct,
      s, w_in, d_in, strides, pads, pads, c->fwd_pd);
  c->bwd_wei_pd = dnnl::convolution_backward_weights::primitive_desc(eng, dnnl::algorithm::convolution_direct,
      s_in, wd, d_in, strides, pads, pads, c->fwd_pd);
  c->fwd = dnnl::convolution_forward(c->fwd_pd);
  c->bwd_data = dnnl::convolution_backward_data(c->bwd_data_pd);
  c->bwd_wei = dnnl::convolution_backward_weights(c->bwd_wei_pd);
  return *cache.emplace(key, std::move(c)).first->second;
}

// `user` wraps Paddle's buffer; returns it, or a reordered copy when the primitive wants another layout.
memory as_input(const memory::desc& want, memory user, dnnl::stream& s) {
  if (want == user.get_desc()) return user;
  memory out(want, cpu_engine());
  dnnl::reorder(user, out).execute(s, user, out);
  return out;
}

// Where a primitive writes a result bound for `user` (Paddle's buffer): `user` itself, or a scratch
// buffer in the layout the primitive wants; copy_back() then reorders the scratch into `user`.
memory as_output(const memory::desc& want, const memory& user) {
  return want == user.get_desc() ? user : memory(want, cpu_engine());
}

void copy_back(memory& result, memory& user, dnnl::stream& s) {
  if (result != user) dnnl::reorder(result, user).execute(s, result, user);
}

// Element types: activations are float32, or bfloat16 between the kernels (CpuKernels.bf16_activations).
dt type_of(const paddle::Tensor& t) { return t.dtype() == paddle::DataType::BFLOAT16 ? dt::bf16 : dt::f32; }
paddle::DataType paddle_type(dt type) {
  return type == dt::bf16 ? paddle::DataType::BFLOAT16 : paddle::DataType::FLOAT32;
}

// Paddle's buffer `t` as oneDNN memory of layout `md`.
memory wrap(const memory::desc& md, const paddle::Tensor& t) {
  return memory(md, cpu_engine(), const_cast<void*>(t.data()));
}

// A new CPU tensor of `shape` (float32 unless told), for a kernel's result.
paddle::Tensor new_tensor(const std::vector<int64_t>& shape, dt type = dt::f32) {
  return paddle::empty(shape, paddle_type(type), paddle::CPUPlace());
}

// X as the forward primitive reads it (a bfloat16 and/or re-laid copy), in a Paddle buffer that the
// gradient op gets back, so the weight gradient reads it instead of casting X again; `read` is set to it.
// Holds one byte when the primitive reads X itself.
paddle::Tensor read_copy(const memory::desc& want, memory user, dnnl::stream& s, memory& read) {
  if (want == user.get_desc()) {
    read = user;
    return paddle::empty({1}, paddle::DataType::UINT8, paddle::CPUPlace());
  }
  auto copy = paddle::empty({static_cast<int64_t>(want.get_size())}, paddle::DataType::UINT8, paddle::CPUPlace());
  read = memory(want, cpu_engine(), copy.data<uint8_t>());
  dnnl::reorder(user, read).execute(s, user, read);
  return copy;
}
}  // namespace

std::vector<paddle::Tensor> ConvForward(const paddle::Tensor& x_in, const paddle::Tensor& w_in, int stride, int padding,
                                        bool, bool bf16, bool blocked, bool bf16_out) {
  auto x = x_in.contiguous(), w = w_in.contiguous();
  dt out_type = bf16_out ? dt::bf16 : dt::f32;
  Conv& c = get_conv(x.shape(), w.shape(), stride, padding, bf16, blocked, type_of(x), out_type);
  auto dims = c.dst.get_dims();
  auto out = new_tensor({dims[0], dims[1], dims[2], dims[3]}, out_type);
  auto& eng = cpu_engine();
  dnnl::stream s(eng);
  memory src;
  auto x_read = read_copy(c.fwd_pd.src_desc(), wrap(c.src, x), s, src);
  memory wei = as_input(c.fwd_pd.weights_desc(), wrap(c.wei, w), s);
  memory user_dst = wrap(c.dst, out);
  memory dst = as_output(c.fwd_pd.dst_desc(), user_dst);
  c.fwd.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
  copy_back(dst, user_dst, s);
  s.wait();
  return {out, x_read};
}

std::vector<paddle::Tensor> ConvBackward(const paddle::Tensor& x_in, const paddle::Tensor& w_in,
                                         const paddle::Tensor& x_read, const paddle::Tensor& dout_in, int stride,
                                         int padding, bool need_dx, bool bf16, bool blocked, bool bf16_out) {
  auto x = x_in.contiguous(), w = w_in.contiguous(), dout = dout_in.contiguous();
  Conv& c = get_conv(x.shape(), w.shape(), stride, padding, bf16, blocked, type_of(x), bf16_out ? dt::bf16 : dt::f32);
  auto& eng = cpu_engine();
  dnnl::stream s(eng);
  auto dx = new_tensor(x.shape(), type_of(x));
  auto dw = new_tensor(w.shape());
  memory ddst_w = as_input(c.bwd_wei_pd.diff_dst_desc(), wrap(c.dst, dout), s);
  auto want = c.bwd_wei_pd.src_desc();
  bool kept = want == c.fwd_pd.src_desc() && x_read.numel() == static_cast<int64_t>(want.get_size());
  memory src = kept ? memory(want, eng, const_cast<uint8_t*>(x_read.data<uint8_t>()))
                    : as_input(want, wrap(c.src, x), s);
  memory user_dw = wrap(c.wei, dw);
  memory dwei = as_output(c.bwd_wei_pd.diff_weights_desc(), user_dw);
  c.bwd_wei.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, ddst_w}, {DNNL_ARG_DIFF_WEIGHTS, dwei}});
  copy_back(dwei, user_dw, s);
  if (need_dx) {
    memory ddst = c.bwd_data_pd.diff_dst_desc() == ddst_w.get_desc() ? ddst_w
                  : as_input(c.bwd_data_pd.diff_dst_desc(), wrap(c.dst, dout), s);
    memory wei = as_input(c.bwd_data_pd.weights_desc(), wrap(c.wei, w), s);
    memory user_dx = wrap(c.src, dx);
    memory dsrc = as_output(c.bwd_data_pd.diff_src_desc(), user_dx);
    c.bwd_data.execute(s, {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, dsrc}});
    copy_back(dsrc, user_dx, s);
  }
  s.wait();
  return {dx, dw};
}

std::vector<std::vector<int64_t>> ConvInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                 int stride, int padding, bool, bool, bool, bool) {
  return {{x[0], w[0], out_size(x[2], w[2], stride, padding), out_size(x[3], w[3], stride, padding)}, {-1}};
}

std::vector<paddle::DataType> ConvInferDtype(const paddle::DataType& x, const paddle::DataType& w, int, int, bool, bool,
                                             bool, bool bf16_out) {
  return {bf16_out ? paddle::DataType::BFLOAT16 : paddle::DataType::FLOAT32, paddle::DataType::UINT8};
}

PD_BUILD_OP(onednn_conv2d)
    .Inputs({"X", "W"})
    .Outputs({"Out", "XRead"})
    .Attrs({"stride: int", "padding: int", "need_dx: bool", "bf16: bool", "blocked: bool", "bf16_out: bool"})
    .SetKernelFn(PD_KERNEL(ConvForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ConvInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(ConvInferDtype));

PD_BUILD_GRAD_OP(onednn_conv2d)
    .Inputs({"X", "W", "XRead", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W")})
    .Attrs({"stride: int", "padding: int", "need_dx: bool", "bf16: bool", "blocked: bool", "bf16_out: bool"})
    .SetKernelFn(PD_KERNEL(ConvBackward));

// 2x2 max pooling with stride 2 (floor), NCHW float32, or nChw16c when `blocked` (see above). Paddle's
// CPU pool2d_grad took ~15% of a cnn step once the convs ran through oneDNN; forward + backward of a
// 128x16x28x28 batch (with a sum and its gradient) measured 7.6 ms with these loops against 11.6 ms
// with Paddle's pool2d. Forward also returns which of the four inputs won (0..3, the first on ties, as
// Paddle does). Both layouts are planes of h x w pixels of `lanes` floats: 1 channel, or a block of 16.
namespace {
struct Planes {
  int64_t planes, h, w, lanes;
};

Planes planes_of(const std::vector<int64_t>& shape, bool blocked) {
  int64_t lanes = is_blocked(shape[1], blocked) ? 16 : 1;
  return {shape[0] * shape[1] / lanes, shape[2], shape[3], lanes};
}

// An element's value for comparing: float32 as it is, bfloat16 (its bits, uint16) widened to float32.
float value(float v) { return v; }
float value(uint16_t bits) {
  uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float v;
  std::memcpy(&v, &wide, sizeof v);
  return v;
}

// The forward loops over planes of `T` (float, or uint16_t for bfloat16's bits): the winner is copied as is.
template <typename T>
void pool_forward(const T* src, T* dst, uint8_t* won, Planes p) {
  int64_t oh = p.h / 2, ow = p.w / 2, row = p.w * p.lanes, lanes = p.lanes;
  for (int64_t c = 0; c < p.planes; ++c) {
    const T* plane = src + c * p.h * row;
    for (int64_t i = 0; i < oh; ++i) {
      for (int64_t j = 0; j < ow; ++j) {
        for (int64_t l = 0; l < lanes; ++l, ++dst, ++won) {
          const T* q = plane + 2 * i * row + 2 * j * lanes + l;
          float best = value(q[0]);
          uint8_t k = 0;
          if (value(q[lanes]) > best) best = value(q[lanes]), k = 1;
          if (value(q[row]) > best) best = value(q[row]), k = 2;
          if (value(q[row + lanes]) > best) best = value(q[row + lanes]), k = 3;
          *dst = q[k == 0 ? 0 : k == 1 ? lanes : k == 2 ? row : row + lanes];
          *won = k;
        }
      }
    }
  }
}

// Each output gradient goes to the input that won; the other three stay 0.
template <typename T>
void pool_backward(const T* grad, const uint8_t* won, T* out, Planes p) {
  int64_t oh = p.h / 2, ow = p.w / 2, row = p.w * p.lanes, lanes = p.lanes;
  for (int64_t c = 0; c < p.planes; ++c) {
    T* plane = out + c * p.h * row;
    for (int64_t i = 0; i < oh; ++i) {
      for (int64_t j = 0; j < ow; ++j) {
        for (int64_t l = 0; l < lanes; ++l, ++grad, ++won) {
          plane[(2 * i + (*won >> 1)) * row + (2 * j + (*won & 1)) * lanes + l] = *grad;
        }
      }
    }
  }
}
}  // namespace

std::vector<paddle::Tensor> MaxPoolForward(const paddle::Tensor& x_in, bool blocked) {
  auto x = x_in.contiguous();
  auto shape = x.shape();
  Planes p = planes_of(shape, blocked);
  auto out = new_tensor({shape[0], shape[1], p.h / 2, p.w / 2}, type_of(x));
  auto arg = paddle::empty({shape[0], shape[1], p.h / 2, p.w / 2}, paddle::DataType::UINT8, paddle::CPUPlace());
  if (type_of(x) == dt::bf16) {
    pool_forward(static_cast<const uint16_t*>(x.data()), static_cast<uint16_t*>(out.data()), arg.data<uint8_t>(), p);
  } else {
    pool_forward(x.data<float>(), out.data<float>(), arg.data<uint8_t>(), p);
  }
  return {out, arg};
}

std::vector<paddle::Tensor> MaxPoolBackward(const paddle::Tensor& x, const paddle::Tensor& arg_in,
                                            const paddle::Tensor& dout_in, bool blocked) {
  auto arg = arg_in.contiguous(), dout = dout_in.contiguous();
  Planes p = planes_of(x.shape(), blocked);
  auto dx = paddle::zeros(x.shape(), x.dtype(), paddle::CPUPlace());
  if (type_of(x) == dt::bf16) {
    pool_backward(static_cast<const uint16_t*>(dout.data()), arg.data<uint8_t>(), static_cast<uint16_t*>(dx.data()), p);
  } else {
    pool_backward(dout.data<float>(), arg.data<uint8_t>(), dx.data<float>(), p);
  }
  return {dx};
}

std::vector<std::vector<int64_t>> MaxPoolInferShape(const std::vector<int64_t>& x, bool) {
  std::vector<int64_t> out{x[0], x[1], x[2] / 2, x[3] / 2};
  return {out, out};
}

std::vector<paddle::DataType> MaxPoolInferDtype(const paddle::DataType& x) { return {x, paddle::DataType::UINT8}; }

PD_BUILD_OP(max_pool2x2)
    .Inputs({"X"})
    .Outputs({"Out", "Arg"})
    .Attrs({"blocked: bool"})
    .SetKernelFn(PD_KERNEL(MaxPoolForward))
    .SetInferShapeFn(PD_INFER_SHAPE(MaxPoolInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(MaxPoolInferDtype));

PD_BUILD_GRAD_OP(max_pool2x2)
    .Inputs({"X", "Arg", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"blocked: bool"})
    .SetKernelFn(PD_KERNEL(MaxPoolBackward));

// Batch normalization in training (batch statistics), through oneDNN in either layout: returns the
// normalized output and the batch's mean and biased variance, which the caller folds into its running
// statistics as Paddle's BatchNorm does. Needed for the blocked layout, which Paddle's kernel cannot read.
namespace {
struct Norm {
  memory::desc data, stat;
  dnnl::batch_normalization_forward::primitive_desc fwd_pd;
  dnnl::batch_normalization_backward::primitive_desc bwd_pd;
  dnnl::batch_normalization_forward fwd;
  dnnl::batch_normalization_backward bwd;
};

// `type`: the element type of the data and its gradients (the statistics, scale and shift stay float32).
Norm& get_norm(const std::vector<int64_t>& x, float eps, bool blocked, bool global_stats = false, dt type = dt::f32) {
  static std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, float, bool, bool, dt>, std::unique_ptr<Norm>> cache;
  static std::mutex lock;
  std::lock_guard<std::mutex> guard(lock);
  auto key = std::make_tuple(x[0], x[1], x[2], x[3], eps, blocked, global_stats, type);
  auto found = cache.find(key);
  if (found != cache.end()) return *found->second;
  auto& eng = cpu_engine();
  auto n = std::make_unique<Norm>();
  n->data = memory::desc({x[0], x[1], x[2], x[3]}, type, layout(x[1], blocked));
  n->stat = memory::desc({x[1]}, dt::f32, tag::x);
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  if (global_stats) {  // evaluation: the running statistics given, nothing to differentiate
    n->fwd_pd = dnnl::batch_normalization_forward::primitive_desc(eng, dnnl::prop_kind::forward_inference, n->data,
        n->data, eps, flags | dnnl::normalization_flags::use_global_stats);
    n->fwd = dnnl::batch_normalization_forward(n->fwd_pd);
    return *cache.emplace(key, std::move(n)).first->second;
  }
  n->fwd_pd = dnnl::batch_normalization_forward::primitive_desc(eng, dnnl::prop_kind::forward_training, n->data,
                                                                n->data, eps, flags);
  n->bwd_pd = dnnl::batch_normalization_backward::primitive_desc(eng, dnnl::prop_kind::backward, n->data, n->data,
                                                                 n->data, eps, flags, n->fwd_pd);
  n->fwd = dnnl::batch_normalization_forward(n->fwd_pd);
  n->bwd = dnnl::batch_normalization_backward(n->bwd_pd);
  return *cache.emplace(key, std::move(n)).first->second;
}

// Runs `n`'s forward primitive: Mean and Var are its results in training, its inputs in evaluation.
void run_norm(Norm& n, const paddle::Tensor& x, const paddle::Tensor& out, const paddle::Tensor& scale,
              const paddle::Tensor& shift, const paddle::Tensor& mean, const paddle::Tensor& var) {
  dnnl::stream s(cpu_engine());
  n.fwd.execute(s, {{DNNL_ARG_SRC, wrap(n.data, x)}, {DNNL_ARG_DST, wrap(n.data, out)},
                    {DNNL_ARG_SCALE, wrap(n.stat, scale)}, {DNNL_ARG_SHIFT, wrap(n.stat, shift)},
                    {DNNL_ARG_MEAN, wrap(n.stat, mean)}, {DNNL_ARG_VARIANCE, wrap(n.stat, var)}});
  s.wait();
}

}  // namespace

std::vector<paddle::Tensor> NormForward(const paddle::Tensor& x_in, const paddle::Tensor& scale,
                                        const paddle::Tensor& shift, float eps, bool blocked) {
  auto x = x_in.contiguous();
  Norm& n = get_norm(x.shape(), eps, blocked, false, type_of(x));
  auto out = new_tensor(x.shape(), type_of(x)), mean = new_tensor({x.shape()[1]}), var = new_tensor({x.shape()[1]});
  run_norm(n, x, out, scale, shift, mean, var);
  return {out, mean, var};
}

std::vector<paddle::Tensor> NormBackward(const paddle::Tensor& x_in, const paddle::Tensor& scale,
                                         const paddle::Tensor& mean, const paddle::Tensor& var,
                                         const paddle::Tensor& dout_in, float eps, bool blocked) {
  auto x = x_in.contiguous(), dout = dout_in.contiguous();
  Norm& n = get_norm(x.shape(), eps, blocked, false, type_of(x));
  auto dx = new_tensor(x.shape(), type_of(x)), dscale = new_tensor({x.shape()[1]}), dshift = new_tensor({x.shape()[1]});
  dnnl::stream s(cpu_engine());
  n.bwd.execute(s, {{DNNL_ARG_SRC, wrap(n.data, x)}, {DNNL_ARG_DIFF_DST, wrap(n.data, dout)},
                    {DNNL_ARG_SCALE, wrap(n.stat, scale)}, {DNNL_ARG_MEAN, wrap(n.stat, mean)},
                    {DNNL_ARG_VARIANCE, wrap(n.stat, var)}, {DNNL_ARG_DIFF_SRC, wrap(n.data, dx)},
                    {DNNL_ARG_DIFF_SCALE, wrap(n.stat, dscale)}, {DNNL_ARG_DIFF_SHIFT, wrap(n.stat, dshift)}});
  s.wait();
  return {dx, dscale, dshift};
}

std::vector<std::vector<int64_t>> NormInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>&,
                                                 const std::vector<int64_t>&, float, bool) {
  return {x, {x[1]}, {x[1]}};
}

std::vector<paddle::DataType> NormInferDtype(const paddle::DataType& x, const paddle::DataType& scale,
                                             const paddle::DataType&) {
  return {x, scale, scale};
}

PD_BUILD_OP(onednn_batch_norm)
    .Inputs({"X", "Scale", "Shift"})
    .Outputs({"Out", "Mean", "Var"})
    .Attrs({"eps: float", "blocked: bool"})
    .SetKernelFn(PD_KERNEL(NormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(NormInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(NormInferDtype));

PD_BUILD_GRAD_OP(onednn_batch_norm)
    .Inputs({"X", "Scale", "Mean", "Var", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Scale"), paddle::Grad("Shift")})
    .Attrs({"eps: float", "blocked: bool"})
    .SetKernelFn(PD_KERNEL(NormBackward));

// Batch normalization in evaluation: by the running statistics (Mean, Var), in either layout, so that
// validation passes blocked activations between the kernels as training does. No gradient.
std::vector<paddle::Tensor> NormInferForward(const paddle::Tensor& x_in, const paddle::Tensor& scale,
                                             const paddle::Tensor& shift, const paddle::Tensor& mean,
                                             const paddle::Tensor& var, float eps, bool blocked) {
  auto x = x_in.contiguous();
  Norm& n = get_norm(x.shape(), eps, blocked, true);
  auto out = new_tensor(x.shape());
  run_norm(n, x, out, scale, shift, mean, var);
  return {out};
}

std::vector<std::vector<int64_t>> NormInferInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>&,
                                                      const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                      const std::vector<int64_t>&, float, bool) {
  return {x};
}

std::vector<paddle::DataType> NormInferInferDtype(const paddle::DataType& x, const paddle::DataType&,
                                                  const paddle::DataType&, const paddle::DataType&,
                                                  const paddle::DataType&) {
  return {x};
}

PD_BUILD_OP(onednn_batch_norm_infer)
    .Inputs({"X", "Scale", "Shift", "Mean", "Var"})
    .Outputs({"Out"})
    .Attrs({"eps: float", "blocked: bool"})
    .SetKernelFn(PD_KERNEL(NormInferForward))
    .SetInferShapeFn(PD_INFER_SHAPE(NormInferInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(NormInferInferDtype));

// A blocked activation (nChw16c) as NCHW, for the Paddle ops that read channels (pooling heads, flatten);
// its gradient goes the other way.
namespace {
// `x` laid out as `from` into a new tensor laid out as `to`, of element type `type`.
paddle::Tensor relayout(const paddle::Tensor& x_in, tag from, tag to, dt type) {
  auto x = x_in.contiguous();
  auto shape = x.shape();
  auto out = new_tensor(shape, type);
  memory::dims dims{shape[0], shape[1], shape[2], shape[3]};
  memory src = wrap(memory::desc(dims, type_of(x), from), x);
  memory dst = wrap(memory::desc(dims, type, to), out);
  dnnl::stream s(cpu_engine());
  dnnl::reorder(src, dst).execute(s, src, dst);
  s.wait();
  return out;
}
}  // namespace

// A bfloat16 activation comes out as float32: the Paddle ops after it take float32 only.
std::vector<paddle::Tensor> ToPlainForward(const paddle::Tensor& x) {
  return {relayout(x, tag::nChw16c, tag::nchw, dt::f32)};
}

std::vector<paddle::Tensor> ToPlainBackward(const paddle::Tensor& x, const paddle::Tensor& dout) {
  return {relayout(dout, tag::nchw, tag::nChw16c, type_of(x))};
}

std::vector<paddle::DataType> ToPlainInferDtype(const paddle::DataType&) { return {paddle::DataType::FLOAT32}; }

PD_BUILD_OP(onednn_to_plain)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(ToPlainForward))
    .SetInferDtypeFn(PD_INFER_DTYPE(ToPlainInferDtype));

PD_BUILD_GRAD_OP(onednn_to_plain)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(ToPlainBackward));

// ReLU, GELU, and the residual ReLU(A + B), for bfloat16 activations: Paddle's CPU relu, gelu and add take no
// bfloat16. Through oneDNN's eltwise and binary primitives (a ReLU post-op on the add); the ReLUs'
// gradients come from their output (dX = dOut where Out > 0), so they keep no inputs. onednn_fork hands one
// activation to two consumers and adds their gradients itself: Paddle's own sum of two bfloat16
// gradients (imperative::TensorAdd, element by element) took about 8% of a resnet step (perf, 2026-12-01).
namespace {
struct Pointwise {
  memory::desc data;
  dnnl::eltwise_forward relu, gelu;
  dnnl::binary add_relu, add;
  dnnl::eltwise_backward relu_grad, gelu_grad;
};

// The primitives for `numel` elements of `type`, laid out flat: each element is treated alike.
Pointwise& get_pointwise(int64_t numel, dt type) {
  static std::map<std::pair<int64_t, dt>, std::unique_ptr<Pointwise>> cache;
  static std::mutex lock;
  std::lock_guard<std::mutex> guard(lock);
  auto found = cache.find({numel, type});
  if (found != cache.end()) return *found->second;
  auto& eng = cpu_engine();
  auto p = std::make_unique<Pointwise>();
  p->data = memory::desc({numel}, type, tag::a);
  auto alg = dnnl::algorithm::eltwise_relu_use_dst_for_bwd;
  auto fwd_pd = dnnl::eltwise_forward::primitive_desc(eng, dnnl::prop_kind::forward_training, alg, p->data, p->data);
  p->relu = dnnl::eltwise_forward(fwd_pd);
  dnnl::post_ops relu_after;
  relu_after.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  dnnl::primitive_attr attr;
  attr.set_post_ops(relu_after);
  p->add_relu = dnnl::binary(dnnl::binary::primitive_desc(eng, dnnl::algorithm::binary_add, p->data, p->data, p->data,
                                                          attr));
  p->add = dnnl::binary(dnnl::binary::primitive_desc(eng, dnnl::algorithm::binary_add, p->data, p->data, p->data));
  p->relu_grad = dnnl::eltwise_backward(dnnl::eltwise_backward::primitive_desc(eng, alg, p->data, p->data, p->data,
                                                                               fwd_pd));
  // GELU: erf, as paddle.nn.GELU's default.
  auto gelu_pd = dnnl::eltwise_forward::primitive_desc(eng, dnnl::prop_kind::forward_training,
                                                       dnnl::algorithm::eltwise_gelu_erf, p->data, p->data);
  p->gelu = dnnl::eltwise_forward(gelu_pd);
  p->gelu_grad = dnnl::eltwise_backward(dnnl::eltwise_backward::primitive_desc(
      eng, dnnl::algorithm::eltwise_gelu_erf, p->data, p->data, p->data, gelu_pd));
  return *cache.emplace(std::make_pair(numel, type), std::move(p)).first->second;
}

// Pointwise primitive `op` applied to `x` (forward) into a new tensor of its shape and type.
paddle::Tensor eltwise(dnnl::eltwise_forward Pointwise::*op, const paddle::Tensor& x_in) {
  auto x = x_in.contiguous();
  Pointwise& p = get_pointwise(x.numel(), type_of(x));
  auto out = new_tensor(x.shape(), type_of(x));
  dnnl::stream s(cpu_engine());
  (p.*op).execute(s, {{DNNL_ARG_SRC, wrap(p.data, x)}, {DNNL_ARG_DST, wrap(p.data, out)}});
  s.wait();
  return out;
}

// The gradient `op` gives dOut at the values it reads (`arg`: DNNL_ARG_DST for ReLU's output, DNNL_ARG_SRC
// for GELU's input), into a new tensor of their shape and type.
paddle::Tensor eltwise_grad(dnnl::eltwise_backward Pointwise::*op, int arg, const paddle::Tensor& at,
                            const paddle::Tensor& dout_in) {
  auto dout = dout_in.contiguous();
  Pointwise& p = get_pointwise(at.numel(), type_of(at));
  auto dx = new_tensor(at.shape(), type_of(at));
  dnnl::stream s(cpu_engine());
  (p.*op).execute(s, {{arg, wrap(p.data, at.contiguous())}, {DNNL_ARG_DIFF_DST, wrap(p.data, dout)},
                      {DNNL_ARG_DIFF_SRC, wrap(p.data, dx)}});
  s.wait();
  return dx;
}

// Binary primitive `op` of `p` (add, add then ReLU) on `a` and `b`, one type and size, into a new tensor.
paddle::Tensor binary(dnnl::binary Pointwise::*op, const paddle::Tensor& a_in, const paddle::Tensor& b_in) {
  auto a = a_in.contiguous(), b = b_in.contiguous();
  PD_CHECK(a.dtype() == b.dtype() && a.numel() == b.numel(), "onednn pointwise: A and B differ in type or size");
  Pointwise& p = get_pointwise(a.numel(), type_of(a));
  auto out = new_tensor(a.shape(), type_of(a));
  dnnl::stream s(cpu_engine());
  (p.*op).execute(s, {{DNNL_ARG_SRC_0, wrap(p.data, a)}, {DNNL_ARG_SRC_1, wrap(p.data, b)},
                      {DNNL_ARG_DST, wrap(p.data, out)}});
  s.wait();
  return out;
}

// dOut where Out > 0.
paddle::Tensor relu_grad(const paddle::Tensor& out, const paddle::Tensor& dout) {
  return eltwise_grad(&Pointwise::relu_grad, DNNL_ARG_DST, out, dout);
}
}  // namespace

std::vector<paddle::Tensor> ReluForward(const paddle::Tensor& x) { return {eltwise(&Pointwise::relu, x)}; }

std::vector<paddle::Tensor> ReluBackward(const paddle::Tensor& out, const paddle::Tensor& dout) {
  return {relu_grad(out, dout)};
}

PD_BUILD_OP(onednn_relu).Inputs({"X"}).Outputs({"Out"}).SetKernelFn(PD_KERNEL(ReluForward));

PD_BUILD_GRAD_OP(onednn_relu)
    .Inputs({"Out", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(ReluBackward));

std::vector<paddle::Tensor> AddReluForward(const paddle::Tensor& a, const paddle::Tensor& b) {
  return {binary(&Pointwise::add_relu, a, b)};
}

// Both inputs get the same gradient, in two tensors: Paddle may add further gradients into either.
std::vector<paddle::Tensor> AddReluBackward(const paddle::Tensor& out, const paddle::Tensor& dout) {
  auto da = relu_grad(out, dout);
  return {da, da.copy_to(paddle::CPUPlace(), true)};
}

PD_BUILD_OP(onednn_add_relu).Inputs({"A", "B"}).Outputs({"Out"}).SetKernelFn(PD_KERNEL(AddReluForward));

PD_BUILD_GRAD_OP(onednn_add_relu)
    .Inputs({"Out", paddle::Grad("Out")})
    .Outputs({paddle::Grad("A"), paddle::Grad("B")})
    .SetKernelFn(PD_KERNEL(AddReluBackward));

// X twice, for two consumers (a residual block's body and shortcut); the gradient is the sum of theirs.
std::vector<paddle::Tensor> ForkForward(const paddle::Tensor& x) { return {x, x}; }

std::vector<paddle::Tensor> ForkBackward(const paddle::Tensor& da, const paddle::Tensor& db) {
  return {binary(&Pointwise::add, da, db)};
}

// GELU of a bfloat16 activation; its gradient reads X.
std::vector<paddle::Tensor> GeluForward(const paddle::Tensor& x) { return {eltwise(&Pointwise::gelu, x)}; }

std::vector<paddle::Tensor> GeluBackward(const paddle::Tensor& x, const paddle::Tensor& dout) {
  return {eltwise_grad(&Pointwise::gelu_grad, DNNL_ARG_SRC, x, dout)};
}

PD_BUILD_OP(onednn_gelu).Inputs({"X"}).Outputs({"Out"}).SetKernelFn(PD_KERNEL(GeluForward));

PD_BUILD_GRAD_OP(onednn_gelu)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(GeluBackward));

PD_BUILD_OP(onednn_fork).Inputs({"X"}).Outputs({"A", "B"}).SetKernelFn(PD_KERNEL(ForkForward));

PD_BUILD_GRAD_OP(onednn_fork)
    .Inputs({paddle::Grad("A"), paddle::Grad("B")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(ForkBackward));
