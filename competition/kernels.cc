// CPU kernels registered as Paddle custom operators: oneDNN convolutions and batch norms, 2x2 max
// pooling.
//
// Why: Paddle 3.3's CPU conv kernel runs im2col + GEMM image by image; in the cnn model it took
// ~80% of a training step and made an epoch 2.2x slower than PyTorch's (BENCHMARKS.md). oneDNN's
// convolution primitives (the library inside Paddle's own wheel) do the same arithmetic about 2x
// faster. Built once by competition/kernels.py; the Python side falls back to Paddle's conv.
//
// onednn_conv2d(X, W, stride, padding, need_dx, bf16, src_block, dst_block, bf16_out): float32 (or, from these kernels,
// bfloat16) X, square stride and padding, no dilation, no groups, no bias (every conv here feeds a
// BatchNorm). With bf16 the primitives read bfloat16 copies of their inputs (X, W, the output gradient)
// and sum in float32 into float32 outputs (bfloat16 with bf16_out, below): on CPUs with AVX512-BF16 a
// resnet training step took 292 ms instead of 468 ms. Its second
// output, XRead, is X as the forward read it (the bfloat16 copy), kept for the weight gradient.
//
// src_block, dst_block, block: in training and validation, activations whose channels fill whole blocks pass
// between these kernels in oneDNN's blocked layout (nChw8c on AVX2, nChw16c on AVX-512: `block` channels
// innermost, the layouts oneDNN's jit kernels of that ISA work in; as many floats as NCHW, so Paddle's
// element-wise ReLU, GELU and add work on them unchanged) instead of being reordered to NCHW and back around
// every op. Reorders were 31% of oneDNN's time in a resnet 32x2 step (ONEDNN_VERBOSE, 2026-11-30, Zen 4).
// The wrong block costs more: on a Zen 3 (AVX2) nChw16c batch norms ran oneDNN's reference code, 8x slower
// a cnn step than nChw8c. kernels.accelerate decides which tensors are blocked; 0 is NCHW.
// onednn_batch_norm (batch statistics), onednn_batch_norm_infer (running statistics) and max_pool2x2 take
// that layout too; onednn_to_plain turns it back to NCHW.
//
// bf16_out (CpuKernels.bf16_activations, with bf16 and a blocked output): training convs write bfloat16, and the
// batch norms, ReLU, GELU, pooling, the residual add (onednn_add_relu) and fork take and give bfloat16, their
// gradients too, as PyTorch's bfloat16 autocast keeps activations. Statistics, weights and their gradients
// stay float32. A resnet 32x2 step of 64 images on one core took 88 ms instead of 107 ms (2026-12-01): no
// float32 -> bfloat16 casts before the convs, half the bytes in every other pass, and Paddle's relu and
// add (float32 only) replaced by oneDNN's.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "paddle/extension.h"

using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

// Output rows (or columns) of a convolution: no dilation, symmetric padding.
int64_t out_size(int64_t in, int64_t kernel, int stride, int pad) { return (in + 2 * pad - kernel) / stride + 1; }

// How an activation is laid out: `block` 0 is NCHW; 8 or 16 (the blocked training path, in the ISA's vector
// width of floats: kernels.py) is nChw8c or nChw16c, channels in blocks of `block` innermost (as many floats as
// NCHW when the channels fill whole blocks, which the Python side checks).
tag layout(int block) { return block == 16 ? tag::nChw16c : block == 8 ? tag::nChw8c : tag::nchw; }

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

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, bool, int, int, dt, dt>;

// `x_type` and `out_type` are X's and Out's element types (float32, or bfloat16 activations); the
// gradients have the same types as what they are gradients of.
Conv& get_conv(const std::vector<int64_t>& x, const std::vector<int64_t>& w, int stride, int pad, bool bf16,
               int src_block, int dst_block, dt x_type, dt out_type) {
  static std::map<Key, std::unique_ptr<Conv>> cache;
  static std::mutex lock;
  std::lock_guard<std::mutex> guard(lock);
  Key key{x[0], x[1], x[2], x[3], w[0], w[2], w[3], stride, pad, bf16, src_block, dst_block, x_type, out_type};
  auto found = cache.find(key);
  if (found != cache.end()) return *found->second;
  auto& eng = cpu_engine();
  int64_t oh = out_size(x[2], w[2], stride, pad), ow = out_size(x[3], w[3], stride, pad);
  auto c = std::make_unique<Conv>();
  c->src = memory::desc({x[0], x[1], x[2], x[3]}, x_type, layout(src_block));
  c->wei = memory::desc({w[0], w[1], w[2], w[3]}, dt::f32, tag::oihw);
  c->dst = memory::desc({x[0], w[0], oh, ow}, out_type, layout(dst_block));
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
                                        bool, bool bf16, int src_block, int dst_block, bool bf16_out) {
  auto x = x_in.contiguous(), w = w_in.contiguous();
  dt out_type = bf16_out ? dt::bf16 : dt::f32;
  Conv& c = get_conv(x.shape(), w.shape(), stride, padding, bf16, src_block, dst_block, type_of(x), out_type);
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
                                         int padding, bool need_dx, bool bf16, int src_block, int dst_block,
                                         bool bf16_out) {
  auto x = x_in.contiguous(), w = w_in.contiguous(), dout = dout_in.contiguous();
  Conv& c = get_conv(x.shape(), w.shape(), stride, padding, bf16, src_block, dst_block, type_of(x),
                     bf16_out ? dt::bf16 : dt::f32);
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
                                                 int stride, int padding, bool, bool, int, int, bool) {
  return {{x[0], w[0], out_size(x[2], w[2], stride, padding), out_size(x[3], w[3], stride, padding)}, {-1}};
}

std::vector<paddle::DataType> ConvInferDtype(const paddle::DataType& x, const paddle::DataType& w, int, int, bool, bool,
                                             int, int, bool bf16_out) {
  return {bf16_out ? paddle::DataType::BFLOAT16 : paddle::DataType::FLOAT32, paddle::DataType::UINT8};
}

PD_BUILD_OP(onednn_conv2d)
    .Inputs({"X", "W"})
    .Outputs({"Out", "XRead"})
    .Attrs({"stride: int", "padding: int", "need_dx: bool", "bf16: bool", "src_block: int", "dst_block: int",
            "bf16_out: bool"})
    .SetKernelFn(PD_KERNEL(ConvForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ConvInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(ConvInferDtype));

PD_BUILD_GRAD_OP(onednn_conv2d)
    .Inputs({"X", "W", "XRead", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W")})
    .Attrs({"stride: int", "padding: int", "need_dx: bool", "bf16: bool", "src_block: int", "dst_block: int",
            "bf16_out: bool"})
    .SetKernelFn(PD_KERNEL(ConvBackward));

// 2x2 max pooling with stride 2 (floor), NCHW, or nChw8c / nChw16c by `block` (see above). Paddle's
// CPU pool2d_grad took ~15% of a cnn step once the convs ran through oneDNN; forward + backward of a
// 128x16x28x28 batch (with a sum and its gradient) measured 7.6 ms with these loops against 11.6 ms
// with Paddle's pool2d. Forward also returns which of the four inputs won (0..3, the first on ties, as
// Paddle does). Both layouts are planes of h x w pixels of `lanes` values: 1 channel, or a block.
namespace {
struct Planes {
  int64_t planes, h, w, lanes;
};

Planes planes_of(const std::vector<int64_t>& shape, int block) {
  int64_t lanes = block > 0 ? block : 1;
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

std::vector<paddle::Tensor> MaxPoolForward(const paddle::Tensor& x_in, int block) {
  auto x = x_in.contiguous();
  auto shape = x.shape();
  Planes p = planes_of(shape, block);
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
                                            const paddle::Tensor& dout_in, int block) {
  auto arg = arg_in.contiguous(), dout = dout_in.contiguous();
  Planes p = planes_of(x.shape(), block);
  auto dx = paddle::zeros(x.shape(), x.dtype(), paddle::CPUPlace());
  if (type_of(x) == dt::bf16) {
    pool_backward(static_cast<const uint16_t*>(dout.data()), arg.data<uint8_t>(), static_cast<uint16_t*>(dx.data()), p);
  } else {
    pool_backward(dout.data<float>(), arg.data<uint8_t>(), dx.data<float>(), p);
  }
  return {dx};
}

std::vector<std::vector<int64_t>> MaxPoolInferShape(const std::vector<int64_t>& x, int) {
  std::vector<int64_t> out{x[0], x[1], x[2] / 2, x[3] / 2};
  return {out, out};
}

std::vector<paddle::DataType> MaxPoolInferDtype(const paddle::DataType& x) { return {x, paddle::DataType::UINT8}; }

PD_BUILD_OP(max_pool2x2)
    .Inputs({"X"})
    .Outputs({"Out", "Arg"})
    .Attrs({"block: int"})
    .SetKernelFn(PD_KERNEL(MaxPoolForward))
    .SetInferShapeFn(PD_INFER_SHAPE(MaxPoolInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(MaxPoolInferDtype));

PD_BUILD_GRAD_OP(max_pool2x2)
    .Inputs({"X", "Arg", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"block: int"})
    .SetKernelFn(PD_KERNEL(MaxPoolBackward));

// Batch normalization in training (batch statistics), in either layout: returns the normalized output and the
// batch's mean and biased variance, which the caller folds into its running statistics as Paddle's BatchNorm does.
// Needed for the blocked layout, which Paddle's kernel cannot read. Our own loops, not oneDNN's primitive: its
// blocked kernels sum each channel's N*H*W values one after another in float32, and on a Zen 3 (nChw8c,
// 64x16x28x28, 2026-12-02) their batch mean erred by 2.6e-4 and the scale's gradient by 2.3e-2 of its size
// (float64 reference; Paddle's op: 1.5e-6 and 1.3e-4); a pre-ReLU sum of -2.6e-6 came out +2.4e-6 and flipped a
// gradient. Here each run of up to 32 pixels is summed in float32 and the runs in float64.
namespace {
// `x`'s dimensions as the loops walk them: images, blocks of `lanes` channels (1 for NCHW), pixels.
struct Grid {
  int64_t images, blocks, pixels, lanes;
  int64_t channels() const { return blocks * lanes; }
  double count() const { return static_cast<double>(images * pixels); }  // values per channel
};

Grid grid_of(const std::vector<int64_t>& shape, int block) {
  int64_t lanes = block > 0 ? block : 1;
  return {shape[0], shape[1] / lanes, shape[2] * shape[3], lanes};
}

// Elements as float32: float as it is, bfloat16 (its bits) widened; written back rounded to nearest even.
inline float to_float(float v) { return v; }
inline float to_float(uint16_t bits) { return value(bits); }
inline void store(float* p, float v) { *p = v; }
inline void store(uint16_t* p, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  *p = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

constexpr int64_t kRun = 32;  // pixels summed in float32 before the float64 totals

// For every channel c, two totals over its images and pixels: first[c] += f1 and second[c] += f2, where f(a, b, c, f1,
// f2) writes the terms for a and b, the values of `x` and `y` at one place. L: channels per block (1: NCHW), as
// a constant so that the loops over a block's lanes vectorize.
template <int L, typename T, typename F>
void channel_totals(const T* x, const T* y, Grid g, F f, std::vector<double>& first, std::vector<double>& second) {
  first.assign(g.channels(), 0.0), second.assign(g.channels(), 0.0);
  for (int64_t i = 0; i < g.images; ++i) {
    for (int64_t b = 0; b < g.blocks; ++b) {
      int64_t at = (i * g.blocks + b) * g.pixels * L, c0 = b * L;
      for (int64_t p0 = 0; p0 < g.pixels; p0 += kRun) {
        float s1[L] = {}, s2[L] = {};
        for (int64_t p = p0, end = std::min(p0 + kRun, g.pixels); p < end; ++p) {
          for (int l = 0; l < L; ++l) {
            float f1, f2;
            f(to_float(x[at + p * L + l]), to_float(y[at + p * L + l]), c0 + l, f1, f2);
            s1[l] += f1, s2[l] += f2;
          }
        }
        for (int l = 0; l < L; ++l) first[c0 + l] += s1[l], second[c0 + l] += s2[l];
      }
    }
  }
}

// out = map(a, b, c) at every place, a and b the values of `x` and `y` there, c the channel.
template <int L, typename T, typename G>
void channel_map(const T* x, const T* y, T* out, Grid g, G map) {
  for (int64_t i = 0; i < g.images; ++i) {
    for (int64_t b = 0; b < g.blocks; ++b) {
      int64_t at = (i * g.blocks + b) * g.pixels * L, c0 = b * L;
      for (int64_t p = 0; p < g.pixels; ++p) {
        for (int l = 0; l < L; ++l) {
          int64_t k = at + p * L + l;
          store(out + k, map(to_float(x[k]), to_float(y[k]), c0 + l));
        }
      }
    }
  }
}

// Forward: the batch's mean and biased variance (sums of values less the first image's mean, so that they stay
// small and the variance loses nothing to cancellation), then out = (x - mean) / sqrt(var + eps) * scale + shift.
template <int L, typename T>
void norm_forward(const T* x, T* out, const float* scale, const float* shift, float eps, Grid g, float* mean,
                  float* var) {
  std::vector<double> s1, s2;
  channel_totals<L>(x, x, {1, g.blocks, g.pixels, g.lanes}, [](float v, float, int64_t, float& f1, float& f2) {
    f1 = v, f2 = 0.f;
  }, s1, s2);  // the first image's sums: the shift
  std::vector<float> k(g.channels());
  for (int64_t c = 0; c < g.channels(); ++c) k[c] = static_cast<float>(s1[c] / g.pixels);
  channel_totals<L>(x, x, g, [&](float v, float, int64_t c, float& f1, float& f2) {
    float d = v - k[c];
    f1 = d, f2 = d * d;
  }, s1, s2);
  std::vector<float> a(g.channels()), b(g.channels());
  for (int64_t c = 0; c < g.channels(); ++c) {
    double m = s1[c] / g.count(), v = std::max(0.0, s2[c] / g.count() - m * m);
    mean[c] = static_cast<float>(k[c] + m), var[c] = static_cast<float>(v);
    double gain = scale[c] / std::sqrt(v + eps);
    a[c] = static_cast<float>(gain), b[c] = static_cast<float>(shift[c] - (k[c] + m) * gain);
  }
  channel_map<L>(x, x, out, g, [&](float v, float, int64_t c) { return v * a[c] + b[c]; });
}

// Backward: dshift = sum(dout), dscale = sum(dout * xhat), dx = scale / std * (dout - dshift / n - xhat * dscale / n)
// with xhat = (x - mean) / std and n the values per channel.
template <int L, typename T>
void norm_backward(const T* x, const T* dout, const float* scale, const float* mean, const float* var, float eps,
                   Grid g, T* dx, float* dscale, float* dshift) {
  std::vector<double> s1, s2;
  channel_totals<L>(x, dout, g, [&](float v, float d, int64_t c, float& f1, float& f2) {
    f1 = d, f2 = d * (v - mean[c]);
  }, s1, s2);
  std::vector<float> gain(g.channels()), mean_d(g.channels()), slope(g.channels());
  for (int64_t c = 0; c < g.channels(); ++c) {
    double rstd = 1.0 / std::sqrt(static_cast<double>(var[c]) + eps);
    dshift[c] = static_cast<float>(s1[c]), dscale[c] = static_cast<float>(s2[c] * rstd);
    gain[c] = static_cast<float>(scale[c] * rstd), mean_d[c] = static_cast<float>(s1[c] / g.count());
    slope[c] = static_cast<float>(s2[c] / g.count() * rstd * rstd);
  }
  channel_map<L>(x, dout, dx, g, [&](float v, float d, int64_t c) {
    return (d - mean_d[c] - (v - mean[c]) * slope[c]) * gain[c];
  });
}

// Calls body(L) with L the channels per block as a constant: 16, 8, or 1 for NCHW.
template <typename Body>
void by_block(int block, Body body) {
  if (block == 16) return body(std::integral_constant<int, 16>());
  if (block == 8) return body(std::integral_constant<int, 8>());
  body(std::integral_constant<int, 1>());
}

// Batch normalization in evaluation (running statistics): oneDNN's primitive, which sums nothing.
struct Norm {
  memory::desc data, stat;
  dnnl::batch_normalization_forward fwd;
};

Norm& get_norm(const std::vector<int64_t>& x, float eps, int block) {
  static std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, float, int>, std::unique_ptr<Norm>> cache;
  static std::mutex lock;
  std::lock_guard<std::mutex> guard(lock);
  auto key = std::make_tuple(x[0], x[1], x[2], x[3], eps, block);
  auto found = cache.find(key);
  if (found != cache.end()) return *found->second;
  auto n = std::make_unique<Norm>();
  n->data = memory::desc({x[0], x[1], x[2], x[3]}, dt::f32, layout(block));
  n->stat = memory::desc({x[1]}, dt::f32, tag::x);
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift |
               dnnl::normalization_flags::use_global_stats;
  n->fwd = dnnl::batch_normalization_forward(dnnl::batch_normalization_forward::primitive_desc(
      cpu_engine(), dnnl::prop_kind::forward_inference, n->data, n->data, eps, flags));
  return *cache.emplace(key, std::move(n)).first->second;
}
}  // namespace

std::vector<paddle::Tensor> NormForward(const paddle::Tensor& x_in, const paddle::Tensor& scale,
                                        const paddle::Tensor& shift, float eps, int block) {
  auto x = x_in.contiguous();
  Grid g = grid_of(x.shape(), block);
  auto out = new_tensor(x.shape(), type_of(x)), mean = new_tensor({x.shape()[1]}), var = new_tensor({x.shape()[1]});
  by_block(block, [&](auto lanes) {
    constexpr int L = decltype(lanes)::value;
    if (type_of(x) == dt::bf16) {
      norm_forward<L>(static_cast<const uint16_t*>(x.data()), static_cast<uint16_t*>(out.data()), scale.data<float>(),
                      shift.data<float>(), eps, g, mean.data<float>(), var.data<float>());
    } else {
      norm_forward<L>(x.data<float>(), out.data<float>(), scale.data<float>(), shift.data<float>(), eps, g,
                      mean.data<float>(), var.data<float>());
    }
  });
  return {out, mean, var};
}

std::vector<paddle::Tensor> NormBackward(const paddle::Tensor& x_in, const paddle::Tensor& scale,
                                         const paddle::Tensor& mean, const paddle::Tensor& var,
                                         const paddle::Tensor& dout_in, float eps, int block) {
  auto x = x_in.contiguous(), dout = dout_in.contiguous();
  Grid g = grid_of(x.shape(), block);
  auto dx = new_tensor(x.shape(), type_of(x)), dscale = new_tensor({x.shape()[1]}), dshift = new_tensor({x.shape()[1]});
  by_block(block, [&](auto lanes) {
    constexpr int L = decltype(lanes)::value;
    if (type_of(x) == dt::bf16) {
      norm_backward<L>(static_cast<const uint16_t*>(x.data()), static_cast<const uint16_t*>(dout.data()),
                       scale.data<float>(), mean.data<float>(), var.data<float>(), eps, g,
                       static_cast<uint16_t*>(dx.data()), dscale.data<float>(), dshift.data<float>());
    } else {
      norm_backward<L>(x.data<float>(), dout.data<float>(), scale.data<float>(), mean.data<float>(), var.data<float>(),
                       eps, g, dx.data<float>(), dscale.data<float>(), dshift.data<float>());
    }
  });
  return {dx, dscale, dshift};
}

std::vector<std::vector<int64_t>> NormInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>&,
                                                 const std::vector<int64_t>&, float, int) {
  return {x, {x[1]}, {x[1]}};
}

std::vector<paddle::DataType> NormInferDtype(const paddle::DataType& x, const paddle::DataType& scale,
                                             const paddle::DataType&) {
  return {x, scale, scale};
}

PD_BUILD_OP(onednn_batch_norm)
    .Inputs({"X", "Scale", "Shift"})
    .Outputs({"Out", "Mean", "Var"})
    .Attrs({"eps: float", "block: int"})
    .SetKernelFn(PD_KERNEL(NormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(NormInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(NormInferDtype));

PD_BUILD_GRAD_OP(onednn_batch_norm)
    .Inputs({"X", "Scale", "Mean", "Var", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Scale"), paddle::Grad("Shift")})
    .Attrs({"eps: float", "block: int"})
    .SetKernelFn(PD_KERNEL(NormBackward));

// A conv's bias, added per channel in either layout (a conv with a bias: the airnet's whitening). Paddle's own add
// summed the bias's gradient over a 256x8x27x27 output in 12 ms an airnet 48 step (Zen 3, 2026-12-02).
std::vector<paddle::Tensor> BiasForward(const paddle::Tensor& x_in, const paddle::Tensor& bias, int block) {
  auto x = x_in.contiguous();
  Grid g = grid_of(x.shape(), block);
  auto out = new_tensor(x.shape());
  const float* b = bias.data<float>();
  by_block(block, [&](auto lanes) {
    constexpr int L = decltype(lanes)::value;
    channel_map<L>(x.data<float>(), x.data<float>(), out.data<float>(), g,
                   [&](float v, float, int64_t c) { return v + b[c]; });
  });
  return {out};
}

std::vector<paddle::Tensor> BiasBackward(const paddle::Tensor& dout_in, int block) {
  auto dout = dout_in.contiguous();
  Grid g = grid_of(dout.shape(), block);
  auto dbias = new_tensor({dout.shape()[1]});
  std::vector<double> sums, unused;
  by_block(block, [&](auto lanes) {
    constexpr int L = decltype(lanes)::value;
    channel_totals<L>(dout.data<float>(), dout.data<float>(), g, [](float d, float, int64_t, float& f1, float& f2) {
      f1 = d, f2 = 0.f;
    }, sums, unused);
  });
  for (int64_t c = 0; c < g.channels(); ++c) dbias.data<float>()[c] = static_cast<float>(sums[c]);
  return {dout, dbias};
}

PD_BUILD_OP(onednn_add_bias)
    .Inputs({"X", "Bias"})
    .Outputs({"Out"})
    .Attrs({"block: int"})
    .SetKernelFn(PD_KERNEL(BiasForward));

PD_BUILD_GRAD_OP(onednn_add_bias)
    .Inputs({paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Bias")})
    .Attrs({"block: int"})
    .SetKernelFn(PD_KERNEL(BiasBackward));

// Batch normalization in evaluation: by the running statistics (Mean, Var), in either layout, so that
// validation passes blocked activations between the kernels as training does. No gradient.
std::vector<paddle::Tensor> NormInferForward(const paddle::Tensor& x_in, const paddle::Tensor& scale,
                                             const paddle::Tensor& shift, const paddle::Tensor& mean,
                                             const paddle::Tensor& var, float eps, int block) {
  auto x = x_in.contiguous();
  Norm& n = get_norm(x.shape(), eps, block);
  auto out = new_tensor(x.shape());
  dnnl::stream s(cpu_engine());
  n.fwd.execute(s, {{DNNL_ARG_SRC, wrap(n.data, x)}, {DNNL_ARG_DST, wrap(n.data, out)},
                    {DNNL_ARG_SCALE, wrap(n.stat, scale)}, {DNNL_ARG_SHIFT, wrap(n.stat, shift)},
                    {DNNL_ARG_MEAN, wrap(n.stat, mean)}, {DNNL_ARG_VARIANCE, wrap(n.stat, var)}});
  s.wait();
  return {out};
}

std::vector<std::vector<int64_t>> NormInferInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>&,
                                                      const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                      const std::vector<int64_t>&, float, int) {
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
    .Attrs({"eps: float", "block: int"})
    .SetKernelFn(PD_KERNEL(NormInferForward))
    .SetInferShapeFn(PD_INFER_SHAPE(NormInferInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(NormInferInferDtype));

// A blocked activation (nChw8c, nChw16c) as NCHW, for the Paddle ops that read channels (pooling heads, flatten);
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
std::vector<paddle::Tensor> ToPlainForward(const paddle::Tensor& x, int block) {
  return {relayout(x, layout(block), tag::nchw, dt::f32)};
}

std::vector<paddle::Tensor> ToPlainBackward(const paddle::Tensor& x, const paddle::Tensor& dout, int block) {
  return {relayout(dout, tag::nchw, layout(block), type_of(x))};
}

std::vector<paddle::DataType> ToPlainInferDtype(const paddle::DataType&) { return {paddle::DataType::FLOAT32}; }

PD_BUILD_OP(onednn_to_plain)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"block: int"})
    .SetKernelFn(PD_KERNEL(ToPlainForward))
    .SetInferDtypeFn(PD_INFER_DTYPE(ToPlainInferDtype));

PD_BUILD_GRAD_OP(onednn_to_plain)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"block: int"})
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
