#include "training/run_config.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/config_reader.hpp"
#include "layers/dynamic_conv.hpp"
#include "layers/proxy_norm.hpp"
#include "training/architectures.hpp"
#include "techniques/registry.hpp"

namespace lowmem {

namespace {

constexpr int int_max = std::numeric_limits<int>::max();
constexpr std::int64_t i64_max = std::numeric_limits<std::int64_t>::max();
constexpr double inf = std::numeric_limits<double>::infinity();

const std::vector<std::string> layer_types = {"conv",          "linear",        "relu",    "leaky_relu",
                                              "maxpool",       "avgpool",       "global_avgpool",
                                              "batchnorm",     "inv_batchnorm", "groupnorm",     "pixel_shuffle",
                                              "flatten",       "residual",      "coupling",
                                              "affine_coupling", "invertible",   "inv_conv",
                                              "layernorm",     "instancenorm",  "proxy_norm",
                                              "embedding",     "positional",    "gelu",
                                              "attention",     "transformer_block", "lstm",
                                              "dropout", "lightweight_conv", "dynamic_conv", "conv_block"};

// Proxy Norm normalises what a group norm without its own affine gives it (Labatie et al.): anywhere else its
// proxy statistics would not describe its input.
void check_proxy_norm_placement(const ConfigReader& r, const std::string& key, const std::vector<LayerSpec>& list) {
  for (std::size_t i = 0; i < list.size(); ++i)
    if (list[i].type == "proxy_norm" && (i == 0 || list[i - 1].type != "groupnorm" || list[i - 1].affine))
      throw Error(r.where(key) + "/" + std::to_string(i) + ": proxy_norm must follow a groupnorm, layernorm or " +
                  "instancenorm with \"affine\": false (it applies the affine itself)");
}

LayerSpec parse_layer(ConfigReader r) {
  LayerSpec s;
  s.type = r.required_choice("type", layer_types);
  s.label = r.path() + " (" + s.type + ")";
  if (s.type == "conv") {
    s.out = r.required_in<std::int64_t>("out", 1, i64_max);
    s.kernel = r.get_in<std::int64_t>("kernel", 3, 1, i64_max);
    s.stride = r.get_in<std::int64_t>("stride", 1, 1, i64_max);
    s.pad = r.get_in<std::int64_t>("pad", 0, 0, i64_max);
    s.bias = r.get("bias", true);
  } else if (s.type == "linear") {
    s.out = r.required_in<std::int64_t>("out", 1, i64_max);
    s.bias = r.get("bias", true);
  } else if (s.type == "dropout") {
    s.dropout = r.get_in("p", 0.1, 0.0, 1.0);
    if (s.dropout >= 1) r.fail("p", "drops every value: expected a probability below 1, got " + std::to_string(s.dropout));
  } else if (s.type == "embedding") {
    s.out = r.required_in<std::int64_t>("out", 1, i64_max);
  } else if (s.type == "lstm") {  // PyTorch's nn.LSTM names
    s.out = r.required_in<std::int64_t>("hidden", 1, i64_max);
    s.num_layers = r.get_in<std::int64_t>("num_layers", 1, 1, 1024);
    if (r.has("bptt")) s.bptt = r.get_in<std::int64_t>("bptt", 0, 0, i64_max);  // truncated BPTT; 0: full
  } else if (s.type == "attention" || s.type == "transformer_block") {
    s.heads = r.get_in<std::int64_t>("heads", 1, 1, i64_max);
    if (s.type == "transformer_block") {
      s.mlp = r.get_in<std::int64_t>("mlp", 4, 1, 64);
      s.eps = r.get_in("eps", 1e-5, 0.0, inf);
    }
  } else if (s.type == "lightweight_conv" || s.type == "dynamic_conv" || s.type == "conv_block") {
    s.heads = r.get_in<std::int64_t>("heads", 1, 1, i64_max);
    s.kernel = r.get_in<std::int64_t>("kernel", default_sequence_kernel, 1, std::int64_t{1} << 24);
    if (s.type == "conv_block") {
      s.conv = r.get_choice("conv", "dynamic", {"dynamic", "lightweight"});
      s.mlp = r.get_in<std::int64_t>("mlp", 4, 1, 64);
      s.eps = r.get_in("eps", 1e-5, 0.0, inf);
      s.bias = false;
    } else {
      s.bias = r.get("bias", false);
    }
  } else if (s.type == "leaky_relu") {
    s.slope = r.get_in("slope", 0.01, 0.0, inf);
  } else if (s.type == "maxpool" || s.type == "avgpool") {
    s.kernel = r.get_in<std::int64_t>("kernel", 2, 1, i64_max);
    s.stride = r.get_in<std::int64_t>("stride", s.kernel, 1, i64_max);
  } else if (s.type == "batchnorm" || s.type == "inv_batchnorm") {
    s.momentum = r.get_in("momentum", 0.1, 0.0, 1.0);
    s.eps = r.get_in("eps", 1e-5, 0.0, inf);
    if (s.type == "inv_batchnorm") s.scale_eps = r.get_in("scale_eps", 1e-4, 0.0, inf);
  } else if (s.type == "groupnorm" || s.type == "layernorm" || s.type == "instancenorm") {
    // Layer norm (one group) and instance norm (a group per channel) are spellings of group norm.
    s.groups = s.type == "groupnorm" ? r.required_in<std::int64_t>("groups", 1, i64_max) : s.type == "layernorm";
    s.eps = r.get_in("eps", 1e-5, 0.0, inf);
    s.affine = r.get("affine", true);
    s.type = "groupnorm";
  } else if (s.type == "proxy_norm") {
    const std::string activation = r.get_choice("activation", "relu", {"relu", "leaky_relu"});
    s.slope = activation == "relu" ? 0.0 : r.get_in("slope", 0.01, 0.0, inf);
    s.eps = r.get_in("eps", proxy_norm_eps, 0.0, inf);
  } else if (s.type == "residual") {
    s.out = r.required_in<std::int64_t>("out", 1, i64_max);
    s.stride = r.get_in<std::int64_t>("stride", 1, 1, i64_max);
    const NormChoice norm = read_norm(r);
    check_norm_channels(r, norm, s.out);
    s.norm = norm.type, s.groups = norm.groups, s.proxy = norm.proxy;
    if (s.norm == "batchnorm") s.momentum = r.get_in("momentum", 0.1, 0.0, 1.0);
    s.eps = r.get_in("eps", 1e-5, 0.0, inf);
  } else if (s.type == "relu") {
    s.slope = 0.0;
  } else if (s.type == "coupling" || s.type == "affine_coupling") {
    for (auto [key, list] : {std::pair{"f", &s.f}, std::pair{"g", &s.g}}) {
      for (ConfigReader& sub : r.object_list(key)) list->push_back(parse_layer(std::move(sub)));
      check_proxy_norm_placement(r, key, *list);
      if (list->empty()) r.fail(key, "expected at least one layer");
    }
  } else if (s.type == "invertible") {
    for (ConfigReader& sub : r.object_list("layers")) s.layers.push_back(parse_layer(std::move(sub)));
    check_proxy_norm_placement(r, "layers", s.layers);
    if (s.layers.empty()) r.fail("layers", "expected at least one layer");
  }
  r.finish();
  return s;
}

// Layers in a config's layer list, those nested in blocks included (JSON depth is bounded: io/limits.hpp).
std::int64_t layer_count(const nlohmann::json& list) {
  std::int64_t n = 0;
  if (!list.is_array()) return n;
  for (const auto& layer : list) {
    ++n;
    if (layer.is_object())
      for (const char* key : {"f", "g", "layers"})
        if (const auto it = layer.find(key); it != layer.end()) n += layer_count(*it);
  }
  return n;
}

// Text in, next-token scores out: the model's input is the data's windows of token ids and its classes the
// corpus's vocabulary, both taken from "data" (and checked where the model names them); its first layer is the
// embedding, the one layer that takes token ids, and it takes nothing else.
void read_sequence_model(ConfigReader& r, const DataSpec& data, ModelSpec& m) {
  m.tokens = true;
  const auto input = r.get_list<std::int64_t>("input", {data.seq_len});
  if (input != std::vector<std::int64_t>{data.seq_len})
    r.fail("input", "a text model's input is [seq_len] = [" + std::to_string(data.seq_len) + "] (data.seq_len)");
  m.input = Shape{data.seq_len};
  m.classes = r.get_in("classes", data.vocabulary, 2, int_max);
  if (m.classes != data.vocabulary)
    r.fail("classes", std::to_string(m.classes) + " does not match the vocabulary of the corpus (" +
                          std::to_string(data.vocabulary) + " " + (data.level == "byte" ? "byte values" : "characters") +
                          " in " + data.path + ")");
}

void check_token_layers(const ConfigReader& r, const ModelSpec& m) {
  for (std::size_t i = 0; i < m.layers.size(); ++i)
    if ((m.layers[i].type == "embedding") != (i == 0 && m.tokens))
      throw Error(r.where(m.arch == "layers" ? "layers" : "arch") + "/" + std::to_string(i) + ": " +
                  (m.tokens ? "a text model starts with an embedding (token ids are not features), and has one"
                            : "an embedding takes token ids: it needs \"data\": {\"dataset\": \"text\"}"));
}

ModelSpec parse_model(ConfigReader r, const DataSpec& data) {
  ModelSpec m;
  if (data.text()) {
    read_sequence_model(r, data, m);
  } else {
    const auto input = r.get_list<std::int64_t>("input", {1, 28, 28});
    if (input.size() != 3 || input[0] < 1 || input[1] < 1 || input[2] < 1)
      r.fail("input", "expected [channels, height, width] with positive entries");
    m.input = Shape(std::vector<index_t>(input.begin(), input.end()));
    m.classes = r.get_in("classes", 10, 2, int_max);
  }
  if (r.has("layers")) {
    if (r.has("arch")) r.fail("arch", "give either \"layers\" or \"arch\", not both");
    m.arch = "layers";
    check_layer_limit(r, "layers", layer_count(r.raw("layers")));
    for (ConfigReader& layer : r.object_list("layers")) m.layers.push_back(parse_layer(std::move(layer)));
    check_proxy_norm_placement(r, "layers", m.layers);
    if (m.layers.empty()) r.fail("layers", "expected at least one layer");
  } else {
    m.arch = r.required_choice("arch", architecture_names());
    expand_architecture(r, m);
  }
  check_token_layers(r, m);
  if (m.tokens) m.layers[0].vocab = m.classes;
  if (r.has("init")) m.init = r.get_choice("init", "default", {"default", "gpt2"});  // read only when given: run ids
  if (r.has("init_std")) {                                                          // stay
    if (m.init != "gpt2") r.fail("init_std", "is the standard deviation of \"init\": \"gpt2\"; give that too");
    m.init_std = r.get_in("init_std", 0.02, 0.0, inf);
  }
  r.finish();
  return m;
}

OptimizerSpec parse_optimizer(ConfigReader r) {
  OptimizerSpec o;
  o.type = r.get_choice("type", "sgd", {"sgd", "adam"});
  o.lr = r.required_in("lr", 0.0, inf);
  o.weight_decay = r.get_in("weight_decay", 0.0, 0.0, inf);
  if (o.type == "sgd") {
    o.momentum = r.get_in("momentum", 0.0, 0.0, 1.0);
    o.nesterov = r.get("nesterov", false);
    if (o.nesterov && o.momentum == 0.0) r.fail("nesterov", "Nesterov momentum needs momentum > 0");
  } else {
    o.beta1 = r.get_in("beta1", 0.9, 0.0, 1.0);
    o.beta2 = r.get_in("beta2", 0.999, 0.0, 1.0);
    o.eps = r.get_in("eps", 1e-8, 0.0, inf);
  }
  r.finish();
  return o;
}

ScheduleSpec parse_schedule(ConfigReader r) {
  ScheduleSpec s;
  s.type = r.get_choice("type", "constant", {"constant", "step", "cosine", "piecewise"});
  s.warmup_steps = r.get_in<std::int64_t>("warmup_steps", 0, 0, i64_max);
  if (s.type == "step") {
    s.step_size = r.required_in<std::int64_t>("step_size", 1, i64_max);
    s.gamma = r.get_in("gamma", 0.1, 0.0, inf);
  } else if (s.type == "cosine") {
    s.final_factor = r.get_in("final_factor", 0.0, 0.0, inf);
  } else if (s.type == "piecewise") {
    const nlohmann::json& points = r.raw("points");
    auto bad = [&] { r.fail("points", "expected a list of [epoch, factor] pairs with increasing epochs"); };
    if (!points.is_array() || points.empty()) bad();
    for (const auto& p : points) {
      if (!p.is_array() || p.size() != 2 || !p[0].is_number() || !p[1].is_number()) bad();
      s.points.emplace_back(p[0].get<double>(), p[1].get<double>());
      if (s.points.size() > 1 && s.points.back().first <= s.points[s.points.size() - 2].first) bad();
    }
  }
  r.finish();
  return s;
}

DataSpec parse_data(ConfigReader r) {
  DataSpec d;
  d.dataset = r.get_choice("dataset", "fashion-mnist", {"fashion-mnist", "cifar10", "synthetic", "text"});
  const std::string default_path = d.dataset == "fashion-mnist" ? "/usr/share/datasets/fashion-mnist"
                                   : d.dataset == "cifar10"     ? "data/cifar-10-batches-bin"
                                   : d.text()                   ? "/usr/share/games/fortunes"
                                                                : "";
  d.path = r.get<std::string>("path", default_path);
  d.train_limit = r.get_in<std::int64_t>("train_limit", 0, 0, i64_max);
  d.test_limit = r.get_in<std::int64_t>("test_limit", 0, 0, i64_max);
  d.normalize = r.get("normalize", !d.text());
  if (d.text()) {
    if (d.normalize) r.fail("normalize", "text has no pixels to normalise (token ids go to an embedding)");
    d.seq_len = r.get_in<std::int64_t>("seq_len", 128, 1, std::int64_t{1} << 24);
    d.level = r.get_choice("level", "char", {"char", "byte"});
    d.validation = r.get_in("validation", 0.1, 0.0, 1.0);
    if (!(d.validation > 0 && d.validation < 1)) r.fail("validation", "expected a fraction between 0 and 1 (exclusive)");
    try {
      d.vocabulary = text_vocabulary(d.path, d.level);
    } catch (const Error& e) {
      r.fail("path", e.what());
    }
  }
  ConfigReader augment = r.object_or_empty("augment");
  d.augment.flip = augment.get("flip", false);
  d.augment.crop_pad = augment.get_in("crop_pad", 0, 0, 64);
  if (d.text() && (d.augment.flip || d.augment.crop_pad > 0)) augment.fail("", "flips and crops are for images, not text");
  // Read only when given: a default recorded in the effective config would change older text configs' run ids.
  if (augment.has("shift") && !d.text()) augment.fail("shift", "shifted windows are for text, not images");
  if (augment.has("shift")) d.augment.shift = augment.get_in("shift", 0, 0, static_cast<int>(d.seq_len));
  augment.finish();
  if (auto s = r.optional_object("synthetic")) {
    if (d.dataset != "synthetic") s->fail("", "only valid with \"dataset\": \"synthetic\"");
    d.synthetic.count = s->get_in<std::int64_t>("count", 1000, 1, i64_max);
    d.synthetic_test = s->get_in<std::int64_t>("test_count", 200, 1, i64_max);
    const auto shape = s->get_list<std::int64_t>("shape", {1, 28, 28});
    if (shape.size() != 3 || shape[0] < 1 || shape[1] < 1 || shape[2] < 1)
      s->fail("shape", "expected [channels, height, width] with positive entries");
    d.synthetic.channels = shape[0], d.synthetic.height = shape[1], d.synthetic.width = shape[2];
    d.synthetic.classes = s->get_in("classes", 10, 2, int_max);
    s->finish();
  }
  r.finish();
  return d;
}

TrainSpec parse_train(ConfigReader r, int classes) {
  TrainSpec t;
  t.epochs = r.get_in("epochs", 1, 1, int_max);
  t.batch = r.get_in("batch", 64, 1, int_max);
  t.steps = r.get_in<std::int64_t>("steps", 0, 0, i64_max);
  // Read only when given: a default written into the resolved config would change every run id.
  if (r.has("checkpoint_every")) t.checkpoint_every = r.get_in<std::int64_t>("checkpoint_every", 0, 0, i64_max);
  t.eval_batch = r.get_in("eval_batch", t.batch, 1, int_max);  // default: the training batch, so that
                                                                 // evaluation never sets the memory peak
  t.diverge_loss = r.get_in("diverge_loss", 100.0 * std::log(static_cast<double>(classes)), 0.0, inf);
  t.optimizer = parse_optimizer(r.object("optimizer"));
  t.schedule = parse_schedule(r.object_or_empty("schedule"));
  r.finish();
  return t;
}

}  // namespace

RunConfig parse_run_config(const nlohmann::json& config, const std::string& file, nlohmann::json* effective) {
  ConfigReader r(config, "", file, effective);
  RunConfig c;
  c.name = r.get<std::string>("name", "run");
  // A name is printed on one line and becomes a file name (results/<name>.h5, through a safe mapping).
  if (c.name.empty() || c.name.size() > 200)
    r.fail("name", "expected 1 to 200 characters, got " + std::to_string(c.name.size()));
  for (unsigned char ch : c.name)
    if (ch < 0x20 || ch == 0x7f) r.fail("name", "contains a control character (code " + std::to_string(ch) + ")");
  c.study = r.get_choice("study", "train", {"train", "gradient", "reconstruction"});
  // Below 2^53: a seed is a float64 summary column, exact up to there.
  c.seed = static_cast<std::uint64_t>(r.get_in<std::int64_t>("seed", 0, 0, (std::int64_t{1} << 53) - 1));
  c.precision = parse_precision(r.get_choice("precision", "f32", {"f32", "f64", "f16", "bf16", "dd", "mp"}));
  const std::string accumulate = r.get_choice("accumulate", "f32", {"f32", "f16", "bf16"});
  if (accumulate != "f32") {
    if (accumulate != to_string(c.precision))
      r.fail("accumulate", "16-bit accumulation \"" + accumulate + "\" needs \"precision\": \"" + accumulate +
                               "\" (got \"" + to_string(c.precision) + "\")");
    c.accumulate = Accumulate::storage;
  }
  c.mp_bits = r.get_in("mp_bits", 113, 113, 113);  // the build has one multiprecision type: 113 bits (IEEE quad)
  // Read only when given: a default written into the resolved config would change every run id.
  if (r.has("conv_band_columns")) c.conv_band_columns = r.get_in<std::int64_t>("conv_band_columns", 256, 1, i64_max);
  if (r.has("save_weights")) {
    c.save_weights = r.get<bool>("save_weights", false);
    if (c.save_weights && c.study != "train")
      r.fail("save_weights", "the " + c.study + " study trains nothing; save_weights is for the train study (the "
                             "gradient study records its weights anyway, under layers/)");
  }
  c.data = parse_data(r.object("data"));
  c.model = parse_model(r.object("model"), c.data);
  // The images are the model's input (checked against the data before any run), so the crop can be checked now.
  if (const int pad = c.data.augment.crop_pad; !c.model.tokens && (pad > c.model.input[1] || pad > c.model.input[2]))
    throw Error(r.where("data") + "/augment/crop_pad: " + std::to_string(pad) + " is larger than the images " +
                "(model.input " + c.model.input.str() + "): expected 0 to " +
                std::to_string(std::min(c.model.input[1], c.model.input[2])));
  if (c.data.dataset == "synthetic") {
    const SyntheticSpec& s = c.data.synthetic;
    if (Shape{s.channels, s.height, s.width} != c.model.input || s.classes != c.model.classes)
      r.fail("data", "synthetic shape/classes must match model input " + c.model.input.str() + " and classes " +
                         std::to_string(c.model.classes));
  }
  c.train = parse_train(r.object("train"), c.model.classes);
  ConfigReader gradient = r.object_or_empty("gradient");
  c.gradient_reference = gradient.get_choice("reference", "mp", {"mp", "dd", "f64", "none"});
  gradient.finish();
  c.techniques = parse_techniques(r);
  if (c.train.checkpoint_every > 0) {
    if (c.study != "train")
      throw Error(r.where("train") + "/checkpoint_every: the " + c.study + " study has no training run to save in "
                  "flight (the train study has)");
    for (const auto& t : c.techniques)
      if (const std::string why = t->cannot_save_in_flight(); !why.empty())
        throw Error(r.where("train") + "/checkpoint_every: " + why);
  }
  const RunFacts facts{c.study, c.train.batch, c.precision, c.accumulate};
  for (const auto& t : in_registry_order(c.techniques)) {
    t->check_run(facts, r);
    if (auto p = t->model_precision()) c.precision = *p;  // mixed precision: the model computes in 16 bits
  }
  // Token ids reach the embedding as values of the model's type, which holds integers exactly up to 2^(p + 1).
  if (const int exact = c.precision == Precision::bf16 ? 256 : c.precision == Precision::f16 ? 2048 : 1 << 24;
      c.model.tokens && c.model.classes > exact)
    r.fail("data", "a vocabulary of " + std::to_string(c.model.classes) + " symbols has ids that " +
                       to_string(c.precision) + " does not hold exactly (at most " + std::to_string(exact) +
                       "): use \"level\": \"byte\" (256 symbols)");
  ConfigReader reconstruction = r.object_or_empty("reconstruction");
  c.reconstruction.reference = reconstruction.get_choice("reference", "mp", {"mp", "dd", "f64", "none"});
  c.reconstruction.weights = reconstruction.get_choice("weights", "random", {"random", "trained"});
  reconstruction.finish();
  r.allow("sweep");
  r.allow("zip");
  r.finish();
  return c;
}

index_t RunConfig::microbatches() const {
  index_t slices = 1;
  for (const auto& t : techniques) slices *= t->microbatches();
  return slices;
}

}  // namespace lowmem
