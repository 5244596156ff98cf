#pragma once
// One run, fully resolved and validated: the config format's single parser. Field names are the public
// contract (README "Config format"); every key read here is valid, any other key is an error.
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "data/dataset.hpp"
#include "numerics/scalar.hpp"
#include "tensor/tensor.hpp"

namespace lowmem {

// One entry of the model's layer list; fields a layer type does not use keep their defaults.
struct LayerSpec {
  std::string type;   // conv, linear, relu, leaky_relu, maxpool, avgpool, global_avgpool, batchnorm,
                      // inv_batchnorm, groupnorm, pixel_shuffle, flatten, residual, coupling, affine_coupling,
                      // invertible, inv_conv, proxy_norm; layernorm and instancenorm are groupnorm with groups
                      // 1 and groups = channels (groups 0 here: one per channel); sequence models: embedding,
                      // positional, gelu, attention, transformer_block, lstm, dropout, lightweight_conv,
                      // dynamic_conv, conv_block (linear and the norms act on each position's features)
  std::string label;  // where it came from, for messages: "/model/layers/3 (conv)"
  index_t out = 0, kernel = 0, stride = 0, pad = 0;  // embedding: out = width
  index_t vocab = 0;  // embedding: the model's vocabulary (its classes, from the data)
  index_t heads = 1, mlp = 4;  // attention, transformer_block, the convolutions: heads; the blocks: MLP width / width
                               // (lightweight_conv, dynamic_conv, conv_block: kernel = taps)
  std::string conv = "dynamic";  // conv_block: its convolution, dynamic | lightweight
  index_t num_layers = 1;      // lstm: stacked layers (out: the hidden size)
  index_t bptt = 0;            // lstm: truncated backpropagation through time every bptt steps; 0: full
  double dropout = 0.1;        // dropout: the probability p of dropping a value
  bool bias = true;
  double slope = 0.01, momentum = 0.1, eps = 1e-5;
  double scale_eps = -1;  // inv_batchnorm: scale |gamma| + scale_eps (default 1e-4); -1: ordinary batch norm
  std::vector<LayerSpec> f, g;  // coupling: the two sub-networks, each mapping (C/2, H, W) to itself;
                                // affine_coupling: (C/2, H, W) to (C, H, W) (scale logits and shifts)
  std::vector<LayerSpec> layers;  // invertible: the chain, every layer of it invertible
  index_t groups = 0;             // groupnorm: channel groups, each normalised on its own; 0: one per channel
  bool affine = true;             // groupnorm: its own gamma and beta (false before a proxy_norm, which has them)
  std::string norm = "batchnorm";  // residual: its norms, batchnorm or groupnorm (with `groups`; layer and
                                   // instance norm are groups 1 and 0)
  bool proxy = false;              // residual: Proxy Norm after its first group norm, in place of the ReLU
};

struct ModelSpec {
  std::string arch;      // "layers" for an explicit list, else cnn, resnet, revnet, hybrid, flat
  Shape input;           // per sample (C, H, W); a sequence model's: (T) token ids
  int classes = 10;      // a sequence model's: the vocabulary (scores at every position: output (T, classes))
  bool tokens = false;   // a sequence model: text in, next-token scores out
  // The model's output per sample: (classes), or (T, classes) for a sequence model.
  Shape output() const { return tokens ? Shape{input[0], classes} : Shape{classes}; }
  // Positions of one example, what the pixel-wise memory cost divides by: an image's pixels (H W), or a sequence's
  // tokens (T).
  index_t positions() const { return tokens ? input[0] : input[1] * input[2]; }
  std::vector<LayerSpec> layers;  // named architectures are expanded into this list
  // How parameters start: "default", each layer's own (PyTorch's defaults); "gpt2", GPT-2's scheme for sequence
  // models (initialize_model in training/model_factory.hpp), with init_std the standard deviation of its weights.
  std::string init = "default";
  double init_std = 0.02;
};

struct OptimizerSpec {
  std::string type = "sgd";  // sgd | adam
  double lr = 0.05, momentum = 0.0, weight_decay = 0.0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  bool nesterov = false;
};

struct ScheduleSpec {
  std::string type = "constant";  // constant | step | cosine | piecewise
  std::int64_t warmup_steps = 0;  // linear ramp from 0 to lr before the schedule proper
  std::int64_t step_size = 0;     // step: multiply by gamma every step_size optimizer steps
  double gamma = 0.1;
  double final_factor = 0.0;      // cosine: lr at the end, as a fraction of lr
  std::vector<std::pair<double, double>> points;  // piecewise: (epoch, factor) knots, linear in between
};

struct DataSpec {
  std::string dataset = "fashion-mnist";  // fashion-mnist | cifar10 | synthetic | text
  std::string path;                       // default per dataset
  std::int64_t train_limit = 0, test_limit = 0;  // 0 = all (text: windows of the train and validation splits)
  bool normalize = true;                  // (text: false, and nothing to normalise)
  // text: windows of seq_len tokens, tokens of `level` (char | byte), the last `validation` of the corpus held out
  std::int64_t seq_len = 0;
  std::string level = "char";
  double validation = 0.1;
  int vocabulary = 0;  // text: the corpus's (read when the config is)
  bool text() const { return dataset == "text"; }
  Augment augment;
  SyntheticSpec synthetic;  // size of the synthetic training set; test set: synthetic_test examples
  std::int64_t synthetic_test = 200;
};

struct TrainSpec {
  int epochs = 1;
  int batch = 64;
  std::int64_t steps = 0;  // stop after this many optimizer steps (0: run all epochs)
  // Save the run's state every this many optimizer steps, so that a killed run continues from there (0: never).
  std::int64_t checkpoint_every = 0;
  int eval_batch = 64;  // default: equal to batch
  // A run has diverged when its loss is NaN or infinite, or exceeds this (default 100 ln(classes): the model then
  // gives the true class a probability below e^-100 on average; 0 = only NaN/Inf).
  double diverge_loss = 0;
  OptimizerSpec optimizer;
  ScheduleSpec schedule;
};

// The run's memory techniques (config "technique": one object, or a list of them that compose), each parsed by
// its own class in lib/techniques (registry.hpp).
class Technique;
using TechniqueList = std::vector<std::shared_ptr<const Technique>>;

// Study "reconstruction": forward, then invert the model's invertible layers one by one from the last.
struct ReconstructionSpec {
  std::string reference = "mp";  // precision of the reference activations, or "none"
  std::string weights = "random";  // random (as initialised) | trained (by the config's "train", in f32)
};

struct RunConfig {
  std::string name = "run";
  std::string study = "train";  // train | gradient | reconstruction
  std::uint64_t seed = 0;
  Precision precision = Precision::f32;  // the model's (technique mixed_precision: its "compute")
  Accumulate accumulate = Accumulate::f32;
  index_t conv_band_columns = 256;  // RunContext::conv_band_columns of the training and evaluation passes
  bool save_weights = false;  // train study: the trained weights in the results, in PyTorch's layouts
  int mp_bits = 113;
  ModelSpec model;
  DataSpec data;
  TrainSpec train;
  std::string gradient_reference = "mp";  // gradient study: precision of the reference gradients, or "none"
  TechniqueList techniques;  // never empty: [store_all] by default
  ReconstructionSpec reconstruction;
  // Slices of each optimizer step's batch (technique microbatch; 1 without).
  index_t microbatches() const;
};

// Validates one resolved config (no "sweep" left). Throws lowmem::Error "<file>: <json pointer>: <problem>".
// effective: if given, receives the config with every default filled in (what the run really used).
RunConfig parse_run_config(const nlohmann::json& config, const std::string& file, nlohmann::json* effective = nullptr);

}  // namespace lowmem
