#include "training/model_factory.hpp"

#include <algorithm>
#include <cmath>

#include "numerics/error.hpp"
#include "layers/activations.hpp"
#include "layers/attention.hpp"
#include "layers/batchnorm.hpp"
#include "layers/groupnorm.hpp"
#include "layers/conv2d.hpp"
#include "layers/coupling.hpp"
#include "layers/dropout.hpp"
#include "layers/dynamic_conv.hpp"
#include "layers/embedding.hpp"
#include "layers/position_wise.hpp"
#include "layers/invertible_chain.hpp"
#include "layers/linear.hpp"
#include "layers/lstm.hpp"
#include "layers/pooling.hpp"
#include "layers/proxy_norm.hpp"
#include "layers/residual.hpp"
#include "layers/transformer_block.hpp"

namespace lowmem {

namespace {

template <class T> std::unique_ptr<Layer<T>> make_layer(const LayerSpec& s, const Shape& in);

// A chain of layer specs as a Sequential on per-sample input shape `in`.
template <class T> Sequential<T> make_chain(const std::vector<LayerSpec>& specs, const Shape& in) {
  Sequential<T> chain(in);
  for (const LayerSpec& s : specs) {
    const MemoryOwner owner(s.label);  // its parameters, in the memory timeline
    try {
      chain.add(make_layer<T>(s, chain.output_shape()));
    } catch (const SizeError& e) {
      throw Error("layer " + s.label + ": " + e.what());  // the innermost layer names itself
    }
  }
  return chain;
}

// Layers on feature vectors (linear, the norms) act on a sequence's positions: (T, F) is a sequence.
template <class T> std::unique_ptr<Layer<T>> per_position(const Shape& in, std::unique_ptr<Layer<T>> layer) {
  return in.rank() == 2 ? std::make_unique<PositionWise<T>>(std::move(layer)) : std::move(layer);
}

template <class T> std::unique_ptr<Layer<T>> make_layer(const LayerSpec& s, const Shape& in) {
  // Image layers (on channels of planes) and sequence layers (on positions) each need their own kind of input.
  static const std::vector<std::string> image_only = {"conv",     "maxpool",  "avgpool",      "global_avgpool",
                                                      "residual", "inv_conv", "pixel_shuffle"};
  if (std::find(image_only.begin(), image_only.end(), s.type) != image_only.end() && in.rank() != 3)
    shape_error(s.label, "is an image layer and needs (channels, height, width) per sample, got " + in.str() +
                             (in.rank() == 2 ? " (a sequence: positions x features)" : ""));
  if (s.type == "conv")
    return std::make_unique<Conv2d<T>>(s.label, Conv2dSpec{in[0], s.out, s.kernel, s.stride, s.pad, s.bias});
  const index_t features = in.rank() == 0 ? 0 : in.dims().back();  // a sequence's: per position
  if (s.type == "linear") {
    if (in.rank() != 1 && in.rank() != 2)
      shape_error(s.label, "needs features (F) or a sequence (T, F) per sample, got " + in.str() + " (flatten first)");
    return per_position<T>(in, std::make_unique<Linear<T>>(s.label, features, s.out, s.bias));
  }
  if (s.type == "embedding") return std::make_unique<Embedding<T>>(s.label, s.vocab, s.out);
  if (s.type == "positional") {
    expect_rank(s.label, in, 2);
    return std::make_unique<PositionalEmbedding<T>>(s.label, in[0], in[1]);
  }
  if (s.type == "gelu") return std::make_unique<Gelu<T>>(s.label);
  if (s.type == "dropout") return std::make_unique<Dropout<T>>(s.label, s.dropout);
  if (s.type == "lstm") {
    expect_rank(s.label, in, 2);
    return std::make_unique<Lstm<T>>(s.label, in[1], s.out, s.num_layers, s.bptt);
  }
  if (s.type == "attention" || s.type == "transformer_block") {
    expect_rank(s.label, in, 2);
    if (in[1] % s.heads != 0)
      shape_error(s.label, std::to_string(s.heads) + " heads do not divide the width of " + std::to_string(in[1]));
    if (s.type == "attention") return std::make_unique<Attention<T>>(s.label, in[1], s.heads);
    return std::make_unique<TransformerBlock<T>>(s.label, in[1], s.heads, s.mlp, s.eps);
  }
  if (s.type == "lightweight_conv" || s.type == "dynamic_conv" || s.type == "conv_block") {
    expect_rank(s.label, in, 2);
    if (in[1] % s.heads != 0)
      shape_error(s.label, std::to_string(s.heads) + " heads do not divide the width of " + std::to_string(in[1]));
    const DynamicConvSpec conv{in[1], s.heads, s.kernel,
                               s.type == "dynamic_conv" || (s.type == "conv_block" && s.conv == "dynamic"), s.bias};
    if (s.type == "conv_block") return std::make_unique<TransformerBlock<T>>(s.label, conv, s.mlp, s.eps);
    return std::make_unique<DynamicConv<T>>(s.label, conv);
  }
  if (s.type == "relu" || s.type == "leaky_relu") return std::make_unique<LeakyRelu<T>>(s.label, s.slope);
  if (s.type == "maxpool") return std::make_unique<MaxPool<T>>(s.label, s.kernel, s.stride);
  if (s.type == "avgpool") return std::make_unique<AvgPool<T>>(s.label, s.kernel, s.stride);
  if (s.type == "global_avgpool") return std::make_unique<GlobalAvgPool<T>>(s.label);
  if (s.type == "flatten") return std::make_unique<Flatten<T>>(s.label);
  // The norms: over the channels of an image or of a feature vector, or over each position's features.
  const index_t channels = in.rank() == 2 ? features : in.rank() == 0 ? 0 : in[0];
  if (in.rank() == 0) shape_error(s.label, "has no input");
  if (s.type == "batchnorm" || s.type == "inv_batchnorm")
    return per_position<T>(in, std::make_unique<BatchNorm<T>>(s.label, channels, s.momentum, s.eps, s.scale_eps));
  if (s.type == "groupnorm") {  // also layernorm (groups 1) and instancenorm (groups 0: one per channel)
    if (in.rank() == 2 && s.groups == 0)
      shape_error(s.label, "instance norm on a sequence would normalise single values (use layernorm)");
    return per_position<T>(in, std::make_unique<GroupNorm<T>>(s.label, channels, s.groups == 0 ? channels : s.groups,
                                                              s.eps, s.affine));
  }
  if (s.type == "proxy_norm")
    return per_position<T>(in, std::make_unique<ProxyNorm<T>>(s.label, channels, s.slope, s.eps));
  if (s.type == "pixel_shuffle") return std::make_unique<PixelShuffle<T>>(s.label);
  if (s.type == "coupling" || s.type == "affine_coupling") {  // on an image's channels or a sequence's features
    const Shape half = coupling_half(s.label, in);
    if (s.type == "coupling")
      return std::make_unique<AdditiveCoupling<T>>(s.label, make_chain<T>(s.f, half), make_chain<T>(s.g, half));
    return std::make_unique<AffineCoupling<T>>(s.label, make_chain<T>(s.f, half), make_chain<T>(s.g, half));
  }
  if (s.type == "inv_conv") {  // Hascoet et al.'s invertible 3x3 conv: a coupling of two half-channel convs
    if (in[0] % 2 != 0) shape_error(s.label, "splits its channels in halves and needs an even count, got " + in.str());
    LayerSpec conv;
    conv.type = "conv", conv.label = s.label + " F", conv.out = in[0] / 2;
    conv.kernel = 3, conv.stride = 1, conv.pad = 1, conv.bias = false;
    const Shape half{in[0] / 2, in[1], in[2]};
    Sequential<T> f = make_chain<T>({conv}, half);
    conv.label = s.label + " G";
    return std::make_unique<AdditiveCoupling<T>>(s.label, std::move(f), make_chain<T>({conv}, half));
  }
  if (s.type == "invertible") return std::make_unique<InvertibleChain<T>>(s.label, make_chain<T>(s.layers, in));
  if (s.type == "residual") {
    BlockNorm norm;
    norm.batch = s.norm == "batchnorm", norm.groups = s.groups, norm.proxy = s.proxy;
    norm.momentum = s.momentum, norm.eps = s.eps;
    return std::make_unique<ResidualBlock<T>>(s.label, in[0], s.out, s.stride, norm);
  }
  throw Error("layer " + s.label + ": unknown layer type \"" + s.type + "\"");
}

}  // namespace

template <class T> Sequential<T> build_model(const ModelSpec& spec) {
  Sequential<T> model = make_chain<T>(spec.layers, spec.input);
  if (model.output_shape() != spec.output())
    throw Error("model: the last layer gives " + model.output_shape().str() + " per sample, but " +
                (spec.tokens ? "scores of the " + std::to_string(spec.classes) + " symbols at each of the " +
                                   std::to_string(spec.input[0]) + " positions are needed (end with linear out=" +
                                   std::to_string(spec.classes) + ")"
                             : std::to_string(spec.classes) + " class scores are needed (end with flatten + linear out=" +
                                   std::to_string(spec.classes) + ")"));
  return model;
}

namespace {

// GPT-2's scheme on one layer and what it holds. branch_end: the layer ends a residual branch.
template <class T> void draw_gpt2(Layer<T>& layer, bool branch_end, double std, double branch_std, Rng& rng) {
  const std::string kind = layer.kind();
  const auto children = layer.children();
  if (children.empty()) {
    if (kind != "embedding" && kind != "positional" && kind != "linear" && kind != "attention") return;
    for (Param<T>* p : layer.params()) {
      const bool bias = p->name.ends_with("bias");
      const double s = branch_end || p->name == "out_proj.weight" ? branch_std : std;
      for (index_t i = 0; i < p->value.numel(); ++i) p->value[i] = bias ? T(0) : round_to<T>(s * rng.normal());
    }
    return;
  }
  std::string last_g;  // a coupling's G ends with its last layer
  for (const auto& [name, child] : children)
    if (name.starts_with("g/")) last_g = name;
  const bool block = kind == "transformer_block" || kind == "conv_block";
  for (const auto& [name, child] : children)
    draw_gpt2(*child, (block && name == "fc2") || (!last_g.empty() && name == last_g), std, branch_std, rng);
}

// Residual blocks in a layer and what it holds: what adds to a residual stream.
template <class T> std::size_t residual_blocks(Layer<T>& layer) {
  const std::string kind = layer.kind();
  std::size_t blocks = kind == "transformer_block" || kind == "conv_block" || kind == "coupling" ||
                       kind == "affine_coupling";
  for (const auto& [name, child] : layer.children()) blocks += residual_blocks(*child);
  return blocks;
}

}  // namespace

template <class T> void initialize_model(Sequential<T>& model, const ModelSpec& spec, std::uint64_t seed) {
  model.initialize(seed);
  if (spec.init != "gpt2") return;
  std::size_t blocks = 0;
  for (std::size_t i = 0; i < model.size(); ++i) blocks += residual_blocks(model.layer(i));
  const double branch_std = spec.init_std / std::sqrt(2.0 * static_cast<double>(std::max<std::size_t>(blocks, 1)));
  for (std::size_t i = 0; i < model.size(); ++i) {
    Rng rng(seed, /*stream=*/(std::uint64_t{1} << 32) + i);  // apart from the layers' own, one per layer
    draw_gpt2(model.layer(i), false, spec.init_std, branch_std, rng);
  }
}

#define LOWMEM_INSTANTIATE_BUILD(T)                                   \
  template Sequential<T> build_model<T>(const ModelSpec&);            \
  template void initialize_model<T>(Sequential<T>&, const ModelSpec&, std::uint64_t);
LOWMEM_FOR_EACH_PRECISION(LOWMEM_INSTANTIATE_BUILD)

}  // namespace lowmem
