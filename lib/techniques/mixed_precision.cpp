#include "techniques/mixed_precision.hpp"

#include <algorithm>
#include <limits>

#include "tensor/csr.hpp"
#include "tensor/state_archive.hpp"

namespace lowmem {

MixedPrecision::MixedPrecision(ConfigReader& r) : compute_(r.get_choice("compute", "f16", {"f16", "bf16"})) {
  if (r.has("loss_scale") && r.raw("loss_scale").is_number())
    loss_scale_ = r.required_in("loss_scale", 1.0, std::numeric_limits<double>::infinity());
  else if (r.get_choice("loss_scale", "dynamic", {"dynamic"}) != "dynamic")
    r.fail("loss_scale", "unreachable");
}

std::string MixedPrecision::label() const {
  return std::string(name) + "-" + compute_ +
         (loss_scale_ > 0 ? "-scale-" + std::to_string(static_cast<long long>(loss_scale_)) : "");
}

void MixedPrecision::check_run(const RunFacts& run, const ConfigReader& reader) const {
  if (run.precision != Precision::f32 || run.accumulate != Accumulate::f32)
    reader.fail("precision", "mixed_precision keeps its master weights in f32 and accumulates in f32: set "
                             "\"precision\": \"f32\" (the model's precision is the technique's \"compute\")");
}

namespace {

// The update through f32 masters. The unscaled gradient is computed in f32 (dividing by a power of two).
template <class T> class MixedUpdate : public ParameterUpdate<T> {
 public:
  MixedUpdate(Sequential<T>& model, Sequential<float>* drawn, double loss_scale, const MakeOptimizer<float>& make)
      : params_(model.params()), dynamic_(loss_scale == 0), scale_(dynamic_ ? 65536.0 : loss_scale) {
    for (std::size_t k = 0; k < params_.size(); ++k) {
      masters_.push_back(make_param<float>(params_[k]->name, params_[k]->value.shape()));
      if (!drawn) continue;  // a dry step: sizes only
      const Tensor<float>& value = drawn->params()[k]->value;
      std::copy(value.data(), value.data() + value.numel(), masters_.back().value.data());
      for (index_t i = 0; i < value.numel(); ++i) params_[k]->value[i] = round_to<T>(value[i]);
    }
    std::vector<Param<float>*> master_params;
    for (Param<float>& p : masters_) master_params.push_back(&p);
    optimizer_ = make(master_params);
  }

  bool step(double lr) override {
    bool finite = true;
    for (Param<T>* p : params_)
      for (index_t i = 0; i < (p->grad.is_dry() ? 0 : p->grad.numel()) && finite; ++i) finite = is_finite(p->grad[i]);
    if (!finite) {
      ++skipped_;
      if (dynamic_) scale_ /= 2, good_steps_ = 0;
      return false;
    }
    const float unscale = static_cast<float>(1.0 / scale_);
    for (std::size_t k = 0; k < params_.size(); ++k)
      for (index_t i = 0; i < (params_[k]->grad.is_dry() ? 0 : params_[k]->grad.numel()); ++i)
        masters_[k].grad[i] = round_to<float>(params_[k]->grad[i]) * unscale;
    optimizer_->step(lr);
    for (std::size_t k = 0; k < params_.size(); ++k)
      for (index_t i = 0; i < (params_[k]->value.is_dry() ? 0 : params_[k]->value.numel()); ++i)
        params_[k]->value[i] = round_to<T>(masters_[k].value[i]);
    if (dynamic_ && ++good_steps_ == 2000) scale_ *= 2, good_steps_ = 0;
    return true;
  }
  void skip() override { ++skipped_; }  // an overflow in the forward pass: no step either
  double loss_scale() const override { return scale_; }
  void set_loss_scale(double scale) override { scale_ = scale; }
  std::int64_t skipped_steps() const override { return skipped_; }
  std::map<std::string, double> report() const override {
    return {{"skipped_steps", static_cast<double>(skipped_)}, {"final_loss_scale", scale_}};
  }
  std::vector<double> magnitudes(std::size_t k) const override { return lowmem::magnitudes(masters_[k].value); }
  void archive(StateArchive& a, const std::string& prefix) override {
    for (std::size_t k = 0; k < masters_.size(); ++k) a.tensor(prefix + "/master/" + std::to_string(k), masters_[k].value);
    optimizer_->archive(a, prefix + "/optimizer");
    a.value(prefix + "/loss_scale", scale_);
    a.value(prefix + "/good_steps", good_steps_);
    a.value(prefix + "/skipped_steps", skipped_);
  }
  void remap(std::size_t k, const std::vector<index_t>& sources) override {
    remap_entries(masters_[k].value, sources);
    remap_entries(masters_[k].grad, sources);
    for (Tensor<float>* state : optimizer_->state(k)) remap_entries(*state, sources);
  }

 private:
  std::vector<Param<T>*> params_;
  std::vector<Param<float>> masters_;
  std::unique_ptr<OptimizerBase<float>> optimizer_;
  bool dynamic_;
  double scale_;
  std::int64_t good_steps_ = 0, skipped_ = 0;
};

template <class T> class MixedHooks : public TechniqueHooks<T> {
 public:
  MixedHooks(double loss_scale, MakeOptimizer<float> make) : loss_scale_(loss_scale), make_(std::move(make)) {}
  std::unique_ptr<ParameterUpdate<T>> update(Sequential<T>& model, Sequential<float>* drawn) override {
    return std::make_unique<MixedUpdate<T>>(model, drawn, loss_scale_, make_);
  }

 private:
  double loss_scale_;
  MakeOptimizer<float> make_;
};

}  // namespace

template <class T> std::unique_ptr<TechniqueHooks<T>> MixedPrecision::hooks_for(const TechniqueServices<T>& s) const {
  return std::make_unique<MixedHooks<T>>(loss_scale_, s.f32_optimizer);
}

LOWMEM_INSTANTIATE_TECHNIQUE_HOOKS(MixedPrecision)

}  // namespace lowmem
