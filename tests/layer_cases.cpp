#include "layer_cases.hpp"

#include <cctype>

#include "layers/activations.hpp"
#include "layers/attention.hpp"
#include "layers/batchnorm.hpp"
#include "layers/conv2d.hpp"
#include "layers/coupling.hpp"
#include "layers/dropout.hpp"
#include "layers/dynamic_conv.hpp"
#include "layers/embedding.hpp"
#include "layers/groupnorm.hpp"
#include "layers/invertible_chain.hpp"
#include "layers/linear.hpp"
#include "layers/lstm.hpp"
#include "layers/position_wise.hpp"
#include "layers/pooling.hpp"
#include "layers/proxy_norm.hpp"
#include "layers/residual.hpp"
#include "layers/transformer_block.hpp"
#include "techniques/sparsity.hpp"

namespace lowmem::testing {

namespace {

template <template <class> class L, class... Args> LayerCase make_case(std::string name, Shape input, Args... args) {
  auto maker = [=]<class T>() -> LayerFactory<T> { return [=] { return std::make_unique<L<T>>(name, args...); }; };
  return {name, input,
          {maker.template operator()<float>(), maker.template operator()<double>(), maker.template operator()<f16>(),
           maker.template operator()<bf16>(), maker.template operator()<mp>(), maker.template operator()<dd>()}};
}

// F and G: conv 3x3 (1 -> 1 channel) + batch norm + leaky ReLU, on half of 2 channels.
template <class T> std::unique_ptr<Layer<T>> make_coupling() {
  auto half_net = [](const std::string& name) {
    Sequential<T> net(Shape{1, 4, 4});
    // (no conv bias: batch norm right after it makes its true gradient exactly 0, which no relative error can measure)
    net.add(std::make_unique<Conv2d<T>>(name + " conv", Conv2dSpec{1, 1, 3, 1, 1, false}));
    net.add(std::make_unique<BatchNorm<T>>(name + " bn", 1, 0.1, 1e-5));
    net.add(std::make_unique<LeakyRelu<T>>(name + " act", 0.2));
    return net;
  };
  return std::make_unique<AdditiveCoupling<T>>("coupling", half_net("F"), half_net("G"));
}

// Hascoet et al.'s invertible 3x3 convolution on `channels` channels: a coupling of two half-channel convs.
template <class T> std::unique_ptr<Layer<T>> make_invertible_conv(const std::string& name, index_t channels, index_t size) {
  auto conv = [&](const std::string& which) {
    Sequential<T> net(Shape{channels / 2, size, size});
    net.add(std::make_unique<Conv2d<T>>(name + " " + which, Conv2dSpec{channels / 2, channels / 2, 3, 1, 1, false}));
    return net;
  };
  return std::make_unique<AdditiveCoupling<T>>(name, conv("F"), conv("G"));
}

// Invertible layer by layer: invertible conv, invertible batch norm, leaky ReLU (the flat architecture's block).
template <class T> Sequential<T> flat_block(const std::string& name, index_t channels, index_t size) {
  Sequential<T> net(Shape{channels, size, size});
  net.add(make_invertible_conv<T>(name + " conv", channels, size));
  net.add(std::make_unique<BatchNorm<T>>(name + " bn", channels, 0.1, 1e-5, 1e-4));
  net.add(std::make_unique<LeakyRelu<T>>(name + " act", 0.2));
  return net;
}

template <class T> std::unique_ptr<Layer<T>> make_invertible_chain() {
  return std::make_unique<InvertibleChain<T>>("invertible", flat_block<T>("chain", 2, 4));
}

// The hybrid block: a coupling whose F and G are themselves invertible layer by layer.
template <class T> std::unique_ptr<Layer<T>> make_hybrid_coupling() {
  return std::make_unique<AdditiveCoupling<T>>("hybrid coupling", flat_block<T>("F", 2, 3), flat_block<T>("G", 2, 3));
}

// Affine coupling on 2 channels: F and G map 1 channel to 2 (scale logit, shift).
template <class T> std::unique_ptr<Layer<T>> make_affine_coupling() {
  Sequential<T> f(Shape{1, 4, 4}), g(Shape{1, 4, 4});
  f.add(std::make_unique<Conv2d<T>>("F conv", Conv2dSpec{1, 2, 3, 1, 1, true}));
  g.add(std::make_unique<Conv2d<T>>("G conv", Conv2dSpec{1, 2, 3, 1, 1, false}));
  g.add(std::make_unique<BatchNorm<T>>("G bn", 2, 0.1, 1e-5));
  return std::make_unique<AffineCoupling<T>>("affine coupling", std::move(f), std::move(g));
}

// A reversible Transformer block on (T, 8): F = layer norm + attention (2 heads), G = layer norm + MLP, each on
// (T, 4), the halves of every position's features.
template <class T> std::unique_ptr<Layer<T>> make_sequence_coupling(index_t positions) {
  auto per_position = [](std::unique_ptr<Layer<T>> layer) { return std::make_unique<PositionWise<T>>(std::move(layer)); };
  Sequential<T> f(Shape{positions, 4}), g(Shape{positions, 4});
  f.add(per_position(std::make_unique<GroupNorm<T>>("F ln", 4, 1, 1e-5)));
  f.add(std::make_unique<Attention<T>>("F attn", 4, 2));
  g.add(per_position(std::make_unique<GroupNorm<T>>("G ln", 4, 1, 1e-5)));
  g.add(per_position(std::make_unique<Linear<T>>("G fc1", 4, 6, true)));
  g.add(std::make_unique<Gelu<T>>("G gelu"));
  g.add(per_position(std::make_unique<Linear<T>>("G fc2", 6, 4, true)));
  return std::make_unique<AdditiveCoupling<T>>("reversible transformer block", std::move(f), std::move(g));
}

// Affine coupling on a sequence (T, 4): F and G map each position's 2 features to 4 (scale logits, shifts).
template <class T> std::unique_ptr<Layer<T>> make_sequence_affine_coupling() {
  Sequential<T> f(Shape{3, 2}), g(Shape{3, 2});
  f.add(std::make_unique<PositionWise<T>>(std::make_unique<Linear<T>>("F fc", 2, 4, true)));
  g.add(std::make_unique<Attention<T>>("G attn", 2, 1));
  g.add(std::make_unique<PositionWise<T>>(std::make_unique<Linear<T>>("G fc", 2, 4, true)));
  return std::make_unique<AffineCoupling<T>>("affine coupling on a sequence", std::move(f), std::move(g));
}

// The layer with its first parameter (the weight) made sparse (technique sparsity): about half of the entries,
// chosen by a seeded draw, and row 0 left empty, which CSR must handle too.
template <class T> std::unique_ptr<Layer<T>> with_sparse_weight(std::unique_ptr<Layer<T>> layer) {
  Param<T>& w = *layer->params().front();
  const index_t rows = w.value.dim(0), cols = w.value.numel() / rows;
  Rng rng(7);
  std::vector<bool> keep(static_cast<std::size_t>(rows * cols));
  for (index_t i = cols; i < rows * cols; ++i) keep[static_cast<std::size_t>(i)] = rng.uniform() < 0.5;
  make_sparse(w, pattern_from_mask(rows, cols, keep));
  return layer;
}

// A case from a generic maker: make.template operator()<T>() builds the layer in T.
template <class Maker> LayerCase case_of(std::string name, Shape input, Maker make) {
  auto factory = [&]<class T>() -> LayerFactory<T> { return [make] { return make.template operator()<T>(); }; };
  return {std::move(name), std::move(input),
          {factory.template operator()<float>(), factory.template operator()<double>(),
           factory.template operator()<f16>(), factory.template operator()<bf16>(), factory.template operator()<mp>(),
           factory.template operator()<dd>()}};
}

}  // namespace

std::vector<LayerCase> all_layer_cases() {
  return {
      make_case<Conv2d>("conv 3x3 pad 1 bias", Shape{2, 2, 5, 5}, Conv2dSpec{2, 3, 3, 1, 1, true}),
      make_case<Conv2d>("conv 3x3 stride 2 no bias", Shape{2, 3, 6, 5}, Conv2dSpec{3, 2, 3, 2, 1, false}),
      make_case<Conv2d>("conv 1x1 stride 2", Shape{2, 2, 4, 4}, Conv2dSpec{2, 3, 1, 2, 0, true}),
      make_case<Conv2d>("conv 5x5 stride 3 pad 2", Shape{3, 2, 7, 8}, Conv2dSpec{2, 2, 5, 3, 2, true}),
      make_case<Linear>("linear", Shape{3, 7}, index_t{7}, index_t{4}, true),
      make_case<Linear>("linear no bias", Shape{2, 5}, index_t{5}, index_t{3}, false),
      case_of("conv sparse weight", Shape{2, 2, 5, 5}, []<class T>() {
        return with_sparse_weight<T>(std::make_unique<Conv2d<T>>("conv", Conv2dSpec{2, 3, 3, 1, 1, true}));
      }),
      case_of("linear sparse weight", Shape{3, 7}, []<class T>() {
        return with_sparse_weight<T>(std::make_unique<Linear<T>>("linear", 7, 4, true));
      }),
      make_case<LeakyRelu>("relu", Shape{2, 3, 4, 4}, 0.0),
      make_case<LeakyRelu>("leaky_relu", Shape{2, 3, 4, 4}, 0.2),
      make_case<MaxPool>("maxpool 2", Shape{2, 2, 6, 6}, index_t{2}, index_t{2}),
      make_case<MaxPool>("maxpool 3 stride 2 (overlapping)", Shape{2, 2, 7, 7}, index_t{3}, index_t{2}),
      make_case<AvgPool>("avgpool 2", Shape{2, 2, 6, 6}, index_t{2}, index_t{2}),
      make_case<AvgPool>("avgpool 3 stride 2", Shape{1, 2, 7, 7}, index_t{3}, index_t{2}),
      make_case<GlobalAvgPool>("global_avgpool", Shape{2, 3, 4, 5}),
      make_case<BatchNorm>("batchnorm 2d", Shape{3, 2, 3, 3}, index_t{2}, 0.1, 1e-5),
      make_case<BatchNorm>("batchnorm 1d", Shape{5, 4}, index_t{4}, 0.1, 1e-5),
      make_case<GroupNorm>("groupnorm 2d", Shape{3, 4, 3, 3}, index_t{4}, index_t{2}, 1e-5),
      make_case<GroupNorm>("groupnorm 1d (layer norm)", Shape{3, 6}, index_t{6}, index_t{1}, 1e-5),
      make_case<GroupNorm>("groupnorm without affine", Shape{3, 4, 3, 3}, index_t{4}, index_t{4}, 1e-5, false),
      make_case<ProxyNorm>("proxy norm 2d (relu)", Shape{3, 4, 3, 3}, index_t{4}, 0.0, 0.03),
      make_case<ProxyNorm>("proxy norm 1d (leaky relu)", Shape{3, 6}, index_t{6}, 0.2, 0.03),
      make_case<BatchNorm>("inv_batchnorm", Shape{3, 2, 3, 3}, index_t{2}, 0.1, 1e-5, 1e-4),
      make_case<PixelShuffle>("pixel_shuffle", Shape{2, 2, 4, 6}),
      make_case<Flatten>("flatten", Shape{2, 2, 3, 3}),
      case_of("coupling", Shape{3, 2, 4, 4}, []<class T>() { return make_coupling<T>(); }),
      case_of("affine coupling", Shape{3, 2, 4, 4}, []<class T>() { return make_affine_coupling<T>(); }),
      case_of("invertible chain", Shape{3, 2, 4, 4}, []<class T>() { return make_invertible_chain<T>(); }),
      case_of("hybrid coupling", Shape{3, 4, 3, 3}, []<class T>() { return make_hybrid_coupling<T>(); }),
      make_case<ResidualBlock>("residual identity", Shape{2, 2, 4, 4}, index_t{2}, index_t{2}, index_t{1}, BlockNorm{}),
      make_case<ResidualBlock>("residual projection", Shape{2, 2, 6, 6}, index_t{2}, index_t{4}, index_t{2}, BlockNorm{}),
      make_case<ResidualBlock>("residual projection, group norm + proxy norm", Shape{2, 2, 6, 6}, index_t{2},
                               index_t{4}, index_t{2}, BlockNorm{.batch = false, .groups = 2, .proxy = true}),
      // Sequence layers: (N, T, F); the embedding takes token ids (N, T).
      [] {
        LayerCase c = make_case<Embedding>("embedding", Shape{2, 5}, index_t{7}, index_t{3});
        c.vocab = 7;
        return c;
      }(),
      make_case<PositionalEmbedding>("positional", Shape{2, 4, 3}, index_t{6}, index_t{3}),
      make_case<Gelu>("gelu", Shape{2, 3, 4}),
      case_of("linear per position", Shape{2, 3, 4}, []<class T>() {
        return std::make_unique<PositionWise<T>>(std::make_unique<Linear<T>>("linear", 4, 5, true));
      }),
      case_of("layernorm per position", Shape{2, 3, 6}, []<class T>() {
        return std::make_unique<PositionWise<T>>(std::make_unique<GroupNorm<T>>("layernorm", 6, 1, 1e-5));
      }),
      make_case<ResidualBlock>("residual identity, layer norm", Shape{2, 2, 4, 4}, index_t{2}, index_t{2}, index_t{1},
                               BlockNorm{.batch = false, .groups = 1}),
      // Sequences (N, T, F): two heads of 2 features; one head, T = 3.
      make_case<Attention>("attention 2 heads", Shape{2, 5, 4}, index_t{4}, index_t{2}),
      make_case<Attention>("attention 1 head", Shape{2, 3, 4}, index_t{4}, index_t{1}),
      make_case<Lstm>("lstm 1 layer", Shape{2, 4, 3}, index_t{3}, index_t{5}, index_t{1}),
      make_case<Lstm>("lstm 2 layers", Shape{2, 3, 3}, index_t{3}, index_t{4}, index_t{2}),
      make_case<TransformerBlock>("transformer_block", Shape{2, 4, 4}, index_t{4}, index_t{2}, index_t{2}, 1e-5),
      make_case<Dropout>("dropout", Shape{3, 2, 5}, 0.4),
      case_of("reversible transformer block", Shape{2, 4, 8}, []<class T>() { return make_sequence_coupling<T>(4); }),
      case_of("affine coupling on a sequence", Shape{2, 3, 4}, []<class T>() { return make_sequence_affine_coupling<T>(); }),
      // Causal convolutions (N, T, F) = (2, 5, 4): 2 heads of 2 channels, 3 taps; and 5 taps on T = 3, wider than the
      // sequence, so that every position reads the zero padding and some taps never meet an input.
      make_case<DynamicConv>("lightweight_conv", Shape{2, 5, 4},
                             DynamicConvSpec{.width = 4, .heads = 2, .kernel = 3, .dynamic = false, .bias = true}),
      make_case<DynamicConv>("lightweight_conv kernel wider than the sequence", Shape{2, 3, 4},
                             DynamicConvSpec{.width = 4, .heads = 2, .kernel = 5, .dynamic = false}),
      make_case<DynamicConv>("dynamic_conv", Shape{2, 5, 4},
                             DynamicConvSpec{.width = 4, .heads = 2, .kernel = 3, .dynamic = true, .bias = true}),
      make_case<DynamicConv>("dynamic_conv kernel wider than the sequence", Shape{2, 3, 4},
                             DynamicConvSpec{.width = 4, .heads = 2, .kernel = 5, .dynamic = true}),
      make_case<DynamicConv>("dynamic_conv 1 head 1 tap", Shape{2, 3, 3},
                             DynamicConvSpec{.width = 3, .heads = 1, .kernel = 1, .dynamic = true}),
      make_case<TransformerBlock>("dynamic conv_block", Shape{2, 4, 4},
                                  DynamicConvSpec{.width = 4, .heads = 2, .kernel = 3, .dynamic = true}, index_t{2}, 1e-5),
      make_case<TransformerBlock>("lightweight conv_block", Shape{2, 4, 4},
                                  DynamicConvSpec{.width = 4, .heads = 1, .kernel = 2, .dynamic = false}, index_t{1}, 1e-5),
  };
}

std::string test_name(const std::string& s) {
  std::string out = s;
  for (char& ch : out)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return out;
}

}  // namespace lowmem::testing
