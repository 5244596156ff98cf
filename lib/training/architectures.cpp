#include "training/architectures.hpp"

#include <limits>

#include "io/config_reader.hpp"
#include "io/limits.hpp"
#include "layers/dynamic_conv.hpp"
#include "layers/proxy_norm.hpp"

namespace lowmem {

namespace {

constexpr int int_max = std::numeric_limits<int>::max();
constexpr std::int64_t i64_max = std::numeric_limits<std::int64_t>::max();
constexpr double inf = std::numeric_limits<double>::infinity();

LayerSpec generated(const std::string& arch, std::size_t index, std::string type) {
  LayerSpec s;
  s.type = std::move(type);
  s.label = "/model (" + arch + " layer " + std::to_string(index) + ": " + s.type + ")";
  if (s.type == "relu") s.slope = 0.0;
  return s;
}

// The cnn's older keys: "groupnorm": G (group norm with G groups) and "batchnorm": false (no norm). Without any
// norm key they are read as before (their defaults recorded, so the run ids of older configs stay).
NormChoice read_cnn_norm(ConfigReader& r) {
  const bool legacy = r.has("groupnorm") || r.has("batchnorm");
  if (legacy && r.has("norm"))
    r.fail("norm", "give either \"norm\" or the older \"groupnorm\" / \"batchnorm\" keys, not both");
  if (legacy && r.has("proxy"))
    r.fail("proxy", "goes with \"norm\": write \"norm\": \"groupnorm\", \"groups\": G instead of \"groupnorm\": G");
  if (r.has("norm") || r.has("proxy") || r.has("groups")) return read_norm(r);
  NormChoice n;
  const bool batchnorm = r.get("batchnorm", true);
  n.groups = r.get_in<std::int64_t>("groupnorm", 0, 0, i64_max);
  n.type = n.groups > 0 ? "groupnorm" : batchnorm ? "batchnorm" : "none";
  return n;
}

// After a conv of `channels` outputs: the norm and the ReLU, or group norm without affine and Proxy Norm (which
// applies the affine and the ReLU itself).
template <class Add> void add_norm_and_relu(const ConfigReader& r, const NormChoice& norm, std::int64_t channels,
                                             Add add) {
  check_norm_channels(r, norm, channels);
  if (norm.type == "batchnorm") add("batchnorm");
  if (norm.type == "groupnorm") {
    LayerSpec& gn = add("groupnorm");
    gn.groups = norm.groups, gn.affine = !norm.proxy;
  }
  if (norm.proxy) {
    LayerSpec& pn = add("proxy_norm");
    pn.slope = 0.0, pn.eps = proxy_norm_eps;
  } else {
    add("relu");
  }
}

// A plain conv net: for each entry of `channels`, conv 3x3 pad 1 [+ norm] + relu, a 2x2 max pool after every
// `pool_every` convs, then flatten and one linear layer. channels [32, 32, 64, 64], pool_every 2 is the reference CNN.
void expand_cnn(ConfigReader& r, ModelSpec& m) {
  const auto channels = r.get_list<std::int64_t>("channels", {32, 32, 64, 64});
  const int pool_every = r.get_in("pool_every", 2, 0, int_max);
  const NormChoice norm = read_cnn_norm(r);
  if (channels.empty()) r.fail("channels", "expected at least one channel count");
  check_layer_limit(r, "channels", static_cast<std::int64_t>(channels.size()) * 4 + 2);
  auto add = [&](std::string type) -> LayerSpec& {
    m.layers.push_back(generated("cnn", m.layers.size(), std::move(type)));
    return m.layers.back();
  };
  for (std::size_t i = 0; i < channels.size(); ++i) {
    if (channels[i] < 1) r.fail("channels", "channel counts must be >= 1");
    LayerSpec& conv = add("conv");
    conv.out = channels[i], conv.kernel = 3, conv.stride = 1, conv.pad = 1;
    add_norm_and_relu(r, norm, channels[i], add);
    if (pool_every > 0 && (i + 1) % pool_every == 0) {
      LayerSpec& pool = add("maxpool");
      pool.kernel = 2, pool.stride = 2;
    }
  }
  add("flatten");
  add("linear").out = m.classes;
}

// Wide ResNet (Zagoruyko & Komodakis) with post-activation basic blocks: depth = 6 n + 4, n blocks per stage,
// stage widths base_width * widen * (1, 2, 4), strides (1, 2, 2). WRN-28-2: depth 28, widen 2, base_width 16.
void expand_resnet(ConfigReader& r, ModelSpec& m) {
  const int depth = r.required_in("depth", 10, int_max);
  const int widen = r.get_in("widen", 1, 1, int_max);
  const int base = r.get_in("base_width", 16, 1, int_max);
  if ((depth - 4) % 6 != 0)
    r.fail("depth", "expected depth = 6 n + 4 (10, 16, 22, 28, ...), got " + std::to_string(depth));
  const int blocks = (depth - 4) / 6;
  const NormChoice norm = read_norm(r);
  check_layer_limit(r, "depth", 3 * static_cast<std::int64_t>(blocks) + 5);
  auto add = [&](std::string type) -> LayerSpec& {
    m.layers.push_back(generated("resnet", m.layers.size(), std::move(type)));
    return m.layers.back();
  };
  LayerSpec& stem = add("conv");
  stem.out = base, stem.kernel = 3, stem.stride = 1, stem.pad = 1, stem.bias = false;
  add_norm_and_relu(r, norm, base, add);
  for (int stage = 0; stage < 3; ++stage)
    for (int b = 0; b < blocks; ++b) {
      LayerSpec& block = add("residual");
      block.out = static_cast<index_t>(base) * widen * (1 << stage);
      block.stride = (stage > 0 && b == 0) ? 2 : 1;
      block.norm = norm.type, block.groups = norm.groups, block.proxy = norm.proxy;
      check_norm_channels(r, norm, block.out);
    }
  add("global_avgpool");
  add("linear").out = m.classes;
}

// Reversible networks: a stem conv 3x3 (input -> width) + invertible batch norm + leaky ReLU; `stages` stages of
// `blocks` blocks, a pixel shuffle (channels x4, H and W / 2) before every stage but the first; global average pool
// and a linear classifier. The block:
//  revnet (Gomez et al. 2017, with i-RevNet's lossless downsampling): an additive coupling whose F and G are
//    conv 3x3, batch norm, leaky ReLU, conv 3x3, batch norm on half the channels;
//  hybrid (Hascoet et al.): an additive coupling whose F and G are invertible layer by layer, 2 x (invertible
//    3x3 conv, invertible batch norm, leaky ReLU) on half the channels;
//  flat (Hascoet et al., invertible layer by layer): invertible 3x3 conv, invertible batch norm, leaky ReLU.
// The invertible 3x3 conv on c channels is an additive coupling whose F and G are one conv on c/2 channels each.
void expand_reversible(ConfigReader& r, ModelSpec& m) {
  const int stages = r.get_in("stages", 2, 1, 8);
  const int blocks = r.get_in("blocks", 2, 0, int_max);
  const int width = r.get_in("width", 16, 2, int_max);
  const double slope = r.get_in("slope", 0.2, 0.0, inf);
  const int split = m.arch == "hybrid" ? 4 : 2;  // hybrid: invertible convs inside F and G split the half again
  if (width % split != 0)
    r.fail("width", std::string(m.arch == "hybrid" ? "hybrid blocks split channels in quarters"
                                                    : "coupling blocks split channels in halves") +
                        ": expected a multiple of " + std::to_string(split) + ", got " + std::to_string(width));
  if (slope == 0.0) r.fail("slope", "a leaky ReLU with slope 0 is not invertible: expected a slope > 0");
  // Layers per block, nested ones included (an invertible conv holds two convs).
  const std::int64_t per_block = m.arch == "flat" ? 5 : m.arch == "hybrid" ? 21 : 11;
  check_layer_limit(r, "blocks", stages * (static_cast<std::int64_t>(blocks) * per_block + 1) + 4);
  auto layer = [&](std::string type, const std::string& where) {
    LayerSpec s = generated(m.arch, 0, std::move(type));
    s.label = "/model (" + m.arch + " " + where + ": " + s.type + ")";
    if (s.type == "leaky_relu") s.slope = slope;
    if (s.type == "inv_batchnorm") s.scale_eps = 1e-4;
    return s;
  };
  auto conv = [&](index_t out, const std::string& where) {
    LayerSpec s = layer("conv", where);
    s.out = out, s.kernel = 3, s.stride = 1, s.pad = 1, s.bias = false;
    return s;
  };
  auto coupling = [&](const std::vector<LayerSpec>& f, const std::vector<LayerSpec>& g, const std::string& where) {
    LayerSpec s = layer("coupling", where);
    s.f = f, s.g = g;
    return s;
  };
  auto invertible_conv = [&](const std::string& where) { return layer("inv_conv", where); };
  m.layers.push_back(conv(width, "stem"));
  m.layers.push_back(layer("inv_batchnorm", "stem"));
  m.layers.push_back(layer("leaky_relu", "stem"));
  index_t channels = width;
  for (int stage = 0; stage < stages; ++stage) {
    if (stage > 0) {
      m.layers.push_back(layer("pixel_shuffle", "stage " + std::to_string(stage)));
      channels *= 4;
    }
    for (int b = 0; b < blocks; ++b) {
      const std::string where = "stage " + std::to_string(stage) + " block " + std::to_string(b);
      const index_t half = channels / 2;
      if (m.arch == "flat") {
        m.layers.push_back(invertible_conv(where));
        m.layers.push_back(layer("inv_batchnorm", where));
        m.layers.push_back(layer("leaky_relu", where));
      } else if (m.arch == "hybrid") {
        auto net = [&](const std::string& name) {
          std::vector<LayerSpec> n;
          for (int k = 0; k < 2; ++k) {
            const std::string at = where + " " + name + std::to_string(k);
            n.push_back(invertible_conv(at));
            n.push_back(layer("inv_batchnorm", at));
            n.push_back(layer("leaky_relu", at));
          }
          return n;
        };
        m.layers.push_back(coupling(net("F"), net("G"), where));
      } else {
        auto net = [&](const std::string& name) {
          const std::string at = where + " " + name;
          return std::vector<LayerSpec>{conv(half, at), layer("batchnorm", at), layer("leaky_relu", at),
                                        conv(half, at), layer("batchnorm", at)};
        };
        m.layers.push_back(coupling(net("F"), net("G"), where));
      }
    }
  }
  m.layers.push_back(layer("global_avgpool", "head"));
  LayerSpec head = layer("linear", "head");
  head.out = m.classes;
  m.layers.push_back(head);
}

// transformer (a GPT-style character model): embedding of the vocabulary into `width` features, learned positions,
// `depth` pre-norm Transformer blocks of `heads` heads and an MLP of `mlp` x width, a final layer norm and a linear
// head to the vocabulary at every position. dynamic_conv: the same with each block's attention replaced by a causal
// dynamic convolution of `heads` heads and `kernel` taps (Wu et al. 2019), or a lightweight one ("conv":
// "lightweight"): conv_blocks. Their input and vocabulary come from the data (read_sequence_model).
// "reversible": true makes each block an additive coupling on the two halves of the width (Reformer's reversible
// block, Kitaev et al. 2020): y1 = x1 + Mix(LN(x2)), y2 = x2 + MLP(LN(y1)), Mix the attention or the convolution
// on width / 2 features (heads dividing width / 2).
void expand_sequence_model(ConfigReader& r, ModelSpec& m) {
  const bool conv = m.arch == "dynamic_conv";
  if (!m.tokens)
    r.fail("arch", std::string(conv ? "a dynamic_conv model" : "a transformer") +
                       " is a sequence model: it needs \"data\": {\"dataset\": \"text\"}");
  const int depth = r.get_in("depth", 4, 0, int_max);
  const std::int64_t width = r.get_in<std::int64_t>("width", 128, 1, i64_max);
  const std::int64_t heads = r.get_in<std::int64_t>("heads", 4, 1, i64_max);
  const std::int64_t mlp = r.get_in<std::int64_t>("mlp", 4, 1, 64);
  const double eps = r.get_in("eps", 1e-5, 0.0, inf);
  std::int64_t kernel = 0;
  std::string kind;
  if (conv) {
    kernel = r.get_in<std::int64_t>("kernel", default_sequence_kernel, 1, std::int64_t{1} << 24);
    kind = r.get_choice("conv", "dynamic", {"dynamic", "lightweight"});
  }
  const bool reversible = r.has("reversible") && r.get("reversible", false);  // read only when given: run ids stay
  if (reversible && width % 2 != 0)
    r.fail("width", "a reversible block splits the width in halves: expected an even width, got " +
                        std::to_string(width));
  const std::int64_t stream = reversible ? width / 2 : width;  // what attention or convolution sees
  if (stream % heads != 0)
    r.fail("heads", std::to_string(heads) + " heads do not divide the " + (reversible ? "half " : "") + "width of " +
                        std::to_string(stream));
  check_layer_limit(r, "depth", 4 + static_cast<std::int64_t>(depth) * 7);
  auto layer = [&](std::string type, const std::string& where) {
    LayerSpec s = generated(m.arch, 0, std::move(type));
    s.label = "/model (" + m.arch + " " + where + ": " + s.type + ")";
    s.eps = eps;
    s.heads = heads, s.mlp = mlp;
    if (s.type == "groupnorm") s.groups = 1;  // layer norm over each position's features
    return s;
  };
  LayerSpec embedding = layer("embedding", "embedding");
  embedding.out = width;
  m.layers.push_back(embedding);
  m.layers.push_back(layer("positional", "positions"));
  for (int b = 0; b < depth; ++b) {
    const std::string where = "block " + std::to_string(b);
    if (!reversible) {
      LayerSpec block = layer(conv ? "conv_block" : "transformer_block", where);
      if (conv) block.kernel = kernel, block.conv = kind, block.bias = false;
      m.layers.push_back(block);
      continue;
    }
    auto linear = [&](std::int64_t out) {
      LayerSpec s = layer("linear", where + " G");
      s.out = out;
      return s;
    };
    LayerSpec mix = layer(!conv ? "attention" : kind == "dynamic" ? "dynamic_conv" : "lightweight_conv", where + " F");
    if (conv) mix.kernel = kernel, mix.bias = false;
    LayerSpec block = layer("coupling", where);
    block.f = {layer("groupnorm", where + " F"), mix};
    block.g = {layer("groupnorm", where + " G"), linear(mlp * stream), layer("gelu", where + " G"), linear(stream)};
    m.layers.push_back(block);
  }
  m.layers.push_back(layer("groupnorm", "head"));
  LayerSpec head = layer("linear", "head");
  head.out = m.classes;
  m.layers.push_back(head);
}

// lstm (a character-level LSTM language model): embedding of the vocabulary into `width` features, an LSTM of
// `depth` stacked layers of `width` hidden units (truncated backpropagation through time every `bptt` steps if
// given), and a linear head to the vocabulary at every position.
void expand_lstm(ConfigReader& r, ModelSpec& m) {
  if (!m.tokens) r.fail("arch", "an lstm is a sequence model: it needs \"data\": {\"dataset\": \"text\"}");
  const std::int64_t depth = r.get_in<std::int64_t>("depth", 2, 1, 1024);
  const std::int64_t width = r.get_in<std::int64_t>("width", 256, 1, i64_max);
  auto layer = [&](std::string type, const std::string& where) {
    LayerSpec s = generated(m.arch, 0, std::move(type));
    s.label = "/model (" + m.arch + " " + where + ": " + s.type + ")";
    return s;
  };
  LayerSpec embedding = layer("embedding", "embedding");
  embedding.out = width;
  LayerSpec lstm = layer("lstm", "recurrence");
  lstm.out = width, lstm.num_layers = depth;
  if (r.has("bptt")) lstm.bptt = r.get_in<std::int64_t>("bptt", 0, 0, i64_max);
  LayerSpec head = layer("linear", "head");
  head.out = m.classes;
  m.layers = {embedding, lstm, head};
}

}  // namespace

// Keys are read only when given: defaults written into the resolved config would change the run ids of every
// config written before they existed.
NormChoice read_norm(ConfigReader& r) {
  NormChoice n;
  const std::string type = r.has("norm") ? r.get_choice("norm", "batchnorm", {"batchnorm", "groupnorm", "layernorm",
                                                                              "instancenorm"})
                                         : "batchnorm";
  if (type == "groupnorm") n.groups = r.required_in<std::int64_t>("groups", 1, i64_max);
  else if (r.has("groups")) r.fail("groups", "applies to \"norm\": \"groupnorm\" only (the norm is \"" + type + "\")");
  else n.groups = type == "layernorm" ? 1 : 0;
  n.type = type == "batchnorm" ? "batchnorm" : "groupnorm";
  n.proxy = r.has("proxy") && r.get("proxy", false);
  if (n.proxy && n.type == "batchnorm")
    r.fail("proxy", "Proxy Norm follows a group, layer or instance norm, not batch norm (set \"norm\")");
  return n;
}

void check_norm_channels(const ConfigReader& r, const NormChoice& norm, std::int64_t channels) {
  if (norm.type == "groupnorm" && norm.groups > 0 && channels % norm.groups != 0)
    r.fail(r.has("groups") ? "groups" : "groupnorm", std::to_string(norm.groups) + " groups do not split " +
                                                         std::to_string(channels) + " channels evenly");
}

void check_layer_limit(const ConfigReader& r, const std::string& key, std::int64_t layers) {
  if (layers > limits().layers)
    r.fail(key, "gives " + std::to_string(layers) + " layers (nested ones included), more than the limit of " +
                    std::to_string(limits().layers) + " (" + raise_hint("layers") + ")");
}

std::vector<std::string> architecture_names() {
  return {"cnn", "resnet", "revnet", "hybrid", "flat", "transformer", "dynamic_conv", "lstm"};
}

void expand_architecture(ConfigReader& r, ModelSpec& m) {
  const bool sequence = m.arch == "transformer" || m.arch == "dynamic_conv";
  if (m.tokens && !sequence && m.arch != "lstm")
    r.fail("arch", "\"" + m.arch + "\" is an image model; text data need a sequence model (transformer, dynamic_conv, "
                   "lstm)");
  if (m.arch == "cnn") expand_cnn(r, m);
  else if (m.arch == "resnet") expand_resnet(r, m);
  else if (sequence) expand_sequence_model(r, m);
  else if (m.arch == "lstm") expand_lstm(r, m);
  else expand_reversible(r, m);
}

}  // namespace lowmem
