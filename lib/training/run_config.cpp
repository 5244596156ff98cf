#include "training/run_config.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/config_reader.hpp"

namespace lowmem {

namespace {

constexpr int int_max = std::numeric_limits<int>::max();
constexpr std::int64_t i64_max = std::numeric_limits<std::int64_t>::max();
constexpr double inf = std::numeric_limits<double>::infinity();

const std::vector<std::string> layer_types = {"conv",          "linear",        "relu",    "leaky_relu",
                                              "maxpool",       "avgpool",       "global_avgpool",
                                              "batchnorm",     "inv_batchnorm", "groupnorm",     "pixel_shuffle",
                                              "flatten",       "residual",      "coupling",
                                              "affine_coupling", "invertible",   "inv_conv"};

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
  } else if (s.type == "leaky_relu") {
    s.slope = r.get_in("slope", 0.01, 0.0, inf);
  } else if (s.type == "maxpool" || s.type == "avgpool") {
    s.kernel = r.get_in<std::int64_t>("kernel", 2, 1, i64_max);
    s.stride = r.get_in<std::int64_t>("stride", s.kernel, 1, i64_max);
  } else if (s.type == "batchnorm" || s.type == "inv_batchnorm") {
    s.momentum = r.get_in("momentum", 0.1, 0.0, 1.0);
    s.eps = r.get_in("eps", 1e-5, 0.0, inf);
    if (s.type == "inv_batchnorm") s.scale_eps = r.get_in("scale_eps", 1e-4, 0.0, inf);
  } else if (s.type == "groupnorm") {
    s.groups = r.required_in<std::int64_t>("groups", 1, i64_max);
    s.eps = r.get_in("eps", 1e-5, 0.0, inf);
  } else if (s.type == "residual") {
    s.out = r.required_in<std::int64_t>("out", 1, i64_max);
    s.stride = r.get_in<std::int64_t>("stride", 1, 1, i64_max);
    s.momentum = r.get_in("momentum", 0.1, 0.0, 1.0);
    s.eps = r.get_in("eps", 1e-5, 0.0, inf);
  } else if (s.type == "relu") {
    s.slope = 0.0;
  } else if (s.type == "coupling" || s.type == "affine_coupling") {
    for (auto [key, list] : {std::pair{"f", &s.f}, std::pair{"g", &s.g}}) {
      for (ConfigReader& sub : r.object_list(key)) list->push_back(parse_layer(std::move(sub)));
      if (list->empty()) r.fail(key, "expected at least one layer");
    }
  } else if (s.type == "invertible") {
    for (ConfigReader& sub : r.object_list("layers")) s.layers.push_back(parse_layer(std::move(sub)));
    if (s.layers.empty()) r.fail("layers", "expected at least one layer");
  }
  r.finish();
  return s;
}

LayerSpec generated(const std::string& arch, std::size_t index, std::string type) {
  LayerSpec s;
  s.type = std::move(type);
  s.label = "/model (" + arch + " layer " + std::to_string(index) + ": " + s.type + ")";
  if (s.type == "relu") s.slope = 0.0;
  return s;
}

// A plain conv net: for each entry of `channels`, conv 3x3 pad 1 [+ batchnorm] + relu, a 2x2 max pool after every
// `pool_every` convs, then flatten and one linear layer. channels [32, 32, 64, 64], pool_every 2 is the reference CNN.
void expand_cnn(ConfigReader& r, ModelSpec& m) {
  const auto channels = r.get_list<std::int64_t>("channels", {32, 32, 64, 64});
  const int pool_every = r.get_in("pool_every", 2, 0, int_max);
  const bool batchnorm = r.get("batchnorm", true);
  // groupnorm G > 0: group norm with G groups instead of batch norm (batch-independent, for microbatches)
  const std::int64_t groups = r.get_in<std::int64_t>("groupnorm", 0, 0, i64_max);
  if (channels.empty()) r.fail("channels", "expected at least one channel count");
  auto add = [&](std::string type) -> LayerSpec& {
    m.layers.push_back(generated("cnn", m.layers.size(), std::move(type)));
    return m.layers.back();
  };
  for (std::size_t i = 0; i < channels.size(); ++i) {
    if (channels[i] < 1) r.fail("channels", "channel counts must be >= 1");
    LayerSpec& conv = add("conv");
    conv.out = channels[i], conv.kernel = 3, conv.stride = 1, conv.pad = 1;
    if (groups > 0) {
      if (channels[i] % groups != 0)
        r.fail("groupnorm", std::to_string(groups) + " groups do not split " + std::to_string(channels[i]) +
                                " channels evenly");
      add("groupnorm").groups = groups;
    } else if (batchnorm) {
      add("batchnorm");
    }
    add("relu");
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
  auto add = [&](std::string type) -> LayerSpec& {
    m.layers.push_back(generated("resnet", m.layers.size(), std::move(type)));
    return m.layers.back();
  };
  LayerSpec& stem = add("conv");
  stem.out = base, stem.kernel = 3, stem.stride = 1, stem.pad = 1, stem.bias = false;
  add("batchnorm");
  add("relu");
  for (int stage = 0; stage < 3; ++stage)
    for (int b = 0; b < blocks; ++b) {
      LayerSpec& block = add("residual");
      block.out = static_cast<index_t>(base) * widen * (1 << stage);
      block.stride = (stage > 0 && b == 0) ? 2 : 1;
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

ModelSpec parse_model(ConfigReader r) {
  ModelSpec m;
  const auto input = r.get_list<std::int64_t>("input", {1, 28, 28});
  if (input.size() != 3 || input[0] < 1 || input[1] < 1 || input[2] < 1)
    r.fail("input", "expected [channels, height, width] with positive entries");
  m.input = Shape(std::vector<index_t>(input.begin(), input.end()));
  m.classes = r.get_in("classes", 10, 2, int_max);
  if (r.has("layers")) {
    if (r.has("arch")) r.fail("arch", "give either \"layers\" or \"arch\", not both");
    m.arch = "layers";
    for (ConfigReader& layer : r.object_list("layers")) m.layers.push_back(parse_layer(std::move(layer)));
    if (m.layers.empty()) r.fail("layers", "expected at least one layer");
  } else {
    m.arch = r.required_choice("arch", {"cnn", "resnet", "revnet", "hybrid", "flat"});
    if (m.arch == "cnn") expand_cnn(r, m);
    else if (m.arch == "resnet") expand_resnet(r, m);
    else expand_reversible(r, m);
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
  d.dataset = r.get_choice("dataset", "fashion-mnist", {"fashion-mnist", "cifar10", "synthetic"});
  const std::string default_path = d.dataset == "fashion-mnist" ? "/usr/share/datasets/fashion-mnist"
                                   : d.dataset == "cifar10"     ? "data/cifar-10-batches-bin"
                                                                : "";
  d.path = r.get<std::string>("path", default_path);
  d.train_limit = r.get_in<std::int64_t>("train_limit", 0, 0, i64_max);
  d.test_limit = r.get_in<std::int64_t>("test_limit", 0, 0, i64_max);
  d.normalize = r.get("normalize", true);
  ConfigReader augment = r.object_or_empty("augment");
  d.augment.flip = augment.get("flip", false);
  d.augment.crop_pad = augment.get_in("crop_pad", 0, 0, 64);
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
  t.eval_batch = r.get_in("eval_batch", t.batch, 1, int_max);  // default: the training batch, so that
                                                                 // evaluation never sets the memory peak
  t.diverge_loss = r.get_in("diverge_loss", 100.0 * std::log(static_cast<double>(classes)), 0.0, inf);
  t.optimizer = parse_optimizer(r.object("optimizer"));
  t.schedule = parse_schedule(r.object_or_empty("schedule"));
  r.finish();
  return t;
}

TechniqueSpec parse_technique(ConfigReader r) {
  TechniqueSpec t;
  t.type = r.get_choice("type", "store_all",
                        {"store_all", "reversible", "checkpoint", "microbatch", "mixed_precision", "approx_activations",
                         "sparsity"});
  if (t.type == "approx_activations") {
    t.bits = r.get_in("bits", 8, 1, 64);
    if (t.bits != 2 && t.bits != 4 && t.bits != 8)
      r.fail("bits", "expected 2, 4 or 8 (the supported K-bit activations), got " + std::to_string(t.bits));
    t.method = r.get_choice("method", "blpa", {"blpa", "naive", "actnn"});
  }
  if (t.type == "microbatch") t.count = r.required_in<std::int64_t>("count", 1, i64_max);
  if (t.type == "mixed_precision") {
    t.compute = r.get_choice("compute", "f16", {"f16", "bf16"});
    if (r.has("loss_scale") && r.raw("loss_scale").is_number()) t.loss_scale = r.required_in("loss_scale", 1.0, inf);
    else if (r.get_choice("loss_scale", "dynamic", {"dynamic"}) != "dynamic") r.fail("loss_scale", "unreachable");
  }
  if (t.type == "sparsity") {
    t.density = r.required_in("density", 0.0, 1.0);
    if (t.density <= 0.0) r.fail("density", "expected a density in (0, 1] (the fraction of weights kept), got 0");
    t.method = r.get_choice("method", "magnitude", {"magnitude", "dsr"});
    if (t.method == "dsr") {
      t.interval = r.get_in<std::int64_t>("interval", 100, 1, i64_max);
      t.prune_fraction = r.get_in("prune_fraction", 0.02, 0.0, 1.0);
      t.threshold = r.get_in("threshold", 0.001, 0.0, inf);
      if (t.threshold <= 0.0) r.fail("threshold", "expected an initial pruning threshold above 0 (it only ever doubles or halves)");
    }
  }
  if (t.type == "checkpoint") {
    t.schedule = r.get_choice("schedule", "uniform", {"uniform", "revolve", "budget"});
    if (t.schedule == "uniform") t.segments = r.get_in<std::int64_t>("segments", 0, 0, i64_max);
    else if (t.schedule == "revolve") t.slots = r.required_in<std::int64_t>("slots", 1, i64_max);
    else t.budget_bytes = r.required_in<std::int64_t>("budget_bytes", 1, i64_max);
  }
  r.finish();
  return t;
}

// "technique": one object, or a list of objects that compose (absent: store_all).
std::vector<TechniqueSpec> parse_techniques(ConfigReader& r) {
  std::vector<TechniqueSpec> list;
  if (r.has("technique") && r.raw("technique").is_array()) {
    for (ConfigReader& t : r.object_list("technique")) list.push_back(parse_technique(std::move(t)));
    if (list.empty()) r.fail("technique", "expected at least one technique");
  } else {
    list.push_back(parse_technique(r.object_or_empty("technique")));
  }
  const bool baseline = std::any_of(list.begin(), list.end(), [](const TechniqueSpec& t) { return t.type == "store_all"; });
  if (baseline && list.size() > 1)
    r.fail("technique", "store_all (keep every activation) is the baseline and composes with no other technique");
  for (std::size_t i = 0; i < list.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (list[i].type == list[j].type)
        r.fail("technique", "\"" + list[i].type + "\" is listed twice");
  auto has = [&](const char* type) {
    return std::any_of(list.begin(), list.end(), [&](const TechniqueSpec& t) { return t.type == type; });
  };
  if (has("checkpoint") && std::any_of(list.begin(), list.end(), [](const TechniqueSpec& t) {
        return t.type == "approx_activations" && t.method == "naive";
      }))
    r.fail("technique", "approx_activations \"naive\" approximates each layer's output in the forward pass, and "
                        "checkpoint's recomputations would not repeat that: use method \"blpa\" or \"actnn\" with "
                        "checkpoint");
  if (has("checkpoint") && has("reversible")) {
    const TechniqueSpec& c = *std::find_if(list.begin(), list.end(), [](const TechniqueSpec& t) { return t.type == "checkpoint"; });
    if (c.schedule != "uniform" || c.segments != 0)
      r.fail("technique", "checkpoint composed with reversible recomputes each run of non-invertible layers from its "
                          "input (reversible rebuilds the invertible runs between them): use {\"type\": "
                          "\"checkpoint\"} without a schedule or segments");
  }
  return list;
}

}  // namespace

RunConfig parse_run_config(const nlohmann::json& config, const std::string& file, nlohmann::json* effective) {
  ConfigReader r(config, "", file, effective);
  RunConfig c;
  c.name = r.get<std::string>("name", "run");
  c.study = r.get_choice("study", "train", {"train", "gradient", "reconstruction"});
  c.seed = static_cast<std::uint64_t>(r.get_in<std::int64_t>("seed", 0, 0, i64_max));
  c.precision = parse_precision(r.get_choice("precision", "f32", {"f32", "f64", "f16", "bf16", "mp"}));
  const std::string accumulate = r.get_choice("accumulate", "f32", {"f32", "f16", "bf16"});
  if (accumulate != "f32") {
    if (accumulate != to_string(c.precision))
      r.fail("accumulate", "16-bit accumulation \"" + accumulate + "\" needs \"precision\": \"" + accumulate +
                               "\" (got \"" + to_string(c.precision) + "\")");
    c.accumulate = Accumulate::storage;
  }
  c.mp_bits = r.get_in("mp_bits", 113, 113, 113);  // the build has one multiprecision type: 113 bits (IEEE quad)
  c.model = parse_model(r.object("model"));
  c.data = parse_data(r.object("data"));
  if (c.data.dataset == "synthetic") {
    const SyntheticSpec& s = c.data.synthetic;
    if (Shape{s.channels, s.height, s.width} != c.model.input || s.classes != c.model.classes)
      r.fail("data", "synthetic shape/classes must match model input " + c.model.input.str() + " and classes " +
                         std::to_string(c.model.classes));
  }
  c.train = parse_train(r.object("train"), c.model.classes);
  ConfigReader gradient = r.object_or_empty("gradient");
  c.gradient_reference = gradient.get_choice("reference", "mp", {"mp", "f64", "none"});
  gradient.finish();
  c.techniques = parse_techniques(r);
  if (const TechniqueSpec* m = c.find("mixed_precision")) {  // the model computes in 16 bits, masters stay in f32
    if (c.precision != Precision::f32 || c.accumulate != Accumulate::f32)
      r.fail("precision", "mixed_precision keeps its master weights in f32 and accumulates in f32: set \"precision\": "
                          "\"f32\" (the model's precision is the technique's \"compute\")");
    c.precision = parse_precision(m->compute);
  }
  if (c.find("sparsity") && c.study != "train")
    r.fail("technique", "sparsity changes the network itself (its weights are pruned), so it applies to the train "
                        "study only; the " + c.study + " study compares against a dense reference");
  if (const TechniqueSpec* m = c.find("microbatch"); m && c.train.batch % m->count != 0)
    r.fail("technique", "microbatch count " + std::to_string(m->count) + " does not divide train.batch " +
                            std::to_string(c.train.batch) + ": every microbatch must be the same size");
  ConfigReader reconstruction = r.object_or_empty("reconstruction");
  c.reconstruction.reference = reconstruction.get_choice("reference", "mp", {"mp", "f64", "none"});
  c.reconstruction.weights = reconstruction.get_choice("weights", "random", {"random", "trained"});
  reconstruction.finish();
  r.allow("sweep");
  r.allow("zip");
  r.finish();
  return c;
}

}  // namespace lowmem
