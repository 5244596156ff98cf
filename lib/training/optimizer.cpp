#include "training/optimizer.hpp"

#include "tensor/state_archive.hpp"

#include <cmath>
#include <numbers>

namespace lowmem {

template <class T>
Optimizer<T>::Optimizer(const OptimizerSpec& spec, std::vector<Param<T>*> params)
    : spec_(spec), params_(std::move(params)) {
  const bool sgd_state = spec_.type == "sgd" && spec_.momentum > 0.0;
  for (Param<T>* p : params_) {
    if (sgd_state || spec_.type == "adam") first_.emplace_back(p->value.shape(), MemoryCategory::optimizer_state);
    if (spec_.type == "adam") second_.emplace_back(p->value.shape(), MemoryCategory::optimizer_state);
  }
}

template <class T> std::vector<Tensor<T>*> Optimizer<T>::state(std::size_t k) {
  std::vector<Tensor<T>*> tensors;
  if (!first_.empty()) tensors.push_back(&first_[k]);
  if (!second_.empty()) tensors.push_back(&second_[k]);
  return tensors;
}

template <class T> void Optimizer<T>::archive(StateArchive& a, const std::string& prefix) {
  for (std::size_t k = 0; k < first_.size(); ++k) a.tensor(prefix + "/" + std::to_string(k) + "/first", first_[k]);
  for (std::size_t k = 0; k < second_.size(); ++k) a.tensor(prefix + "/" + std::to_string(k) + "/second", second_[k]);
  a.value(prefix + "/steps", steps_);
}

template <class T> void Optimizer<T>::step(double lr_value) {
  using W = wide_t<T>;
  ++steps_;
  const W lr = round_to<W>(lr_value), decay = round_to<W>(spec_.weight_decay);
  for (std::size_t k = 0; k < params_.size(); ++k) {
    Tensor<T>& w = params_[k]->value;
    const Tensor<T>& grad = params_[k]->grad;
    if (w.is_dry()) continue;
    if (spec_.type == "sgd") {
      // PyTorch: g += wd w; buf = momentum buf + g (buf = g on the first step); g = g + momentum buf (Nesterov) or buf.
      const W momentum = round_to<W>(spec_.momentum);
      for (index_t i = 0; i < w.numel(); ++i) {
        const W wi = round_to<W>(w[i]);
        W g = round_to<W>(grad[i]) + decay * wi;
        if (!first_.empty()) {
          const W buf = steps_ == 1 ? g : W(momentum * round_to<W>(first_[k][i]) + g);
          first_[k][i] = round_to<T>(buf);
          g = spec_.nesterov ? W(g + momentum * buf) : buf;
        }
        w[i] = round_to<T>(W(wi - lr * g));
      }
    } else {
      // PyTorch Adam (L2 weight decay added to the gradient, bias-corrected moments, eps outside the root).
      const W b1 = round_to<W>(spec_.beta1), b2 = round_to<W>(spec_.beta2), eps = round_to<W>(spec_.eps);
      const W c1 = round_to<W>(1.0 - std::pow(spec_.beta1, static_cast<double>(steps_)));
      const W c2 = round_to<W>(1.0 - std::pow(spec_.beta2, static_cast<double>(steps_)));
      for (index_t i = 0; i < w.numel(); ++i) {
        const W wi = round_to<W>(w[i]);
        const W g = round_to<W>(grad[i]) + decay * wi;
        const W m = b1 * round_to<W>(first_[k][i]) + (W(1) - b1) * g;
        const W v = b2 * round_to<W>(second_[k][i]) + (W(1) - b2) * g * g;
        first_[k][i] = round_to<T>(m);
        second_[k][i] = round_to<T>(v);
        w[i] = round_to<T>(W(wi - lr * (m / c1) / (sqrt_of(W(v / c2)) + eps)));
      }
    }
  }
}

double learning_rate(const OptimizerSpec& opt, const ScheduleSpec& s, std::int64_t step, std::int64_t steps_per_epoch,
                     std::int64_t total_steps) {
  if (step < s.warmup_steps) return opt.lr * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
  const double t = static_cast<double>(step - s.warmup_steps);
  const double span = static_cast<double>(std::max<std::int64_t>(1, total_steps - s.warmup_steps));
  if (s.type == "step") return opt.lr * std::pow(s.gamma, std::floor(t / static_cast<double>(s.step_size)));
  if (s.type == "cosine")
    return opt.lr * (s.final_factor + (1.0 - s.final_factor) * 0.5 * (1.0 + std::cos(std::numbers::pi * t / span)));
  if (s.type == "piecewise") {
    const double epoch = static_cast<double>(step) / static_cast<double>(std::max<std::int64_t>(1, steps_per_epoch));
    if (epoch <= s.points.front().first) return opt.lr * s.points.front().second;
    for (std::size_t i = 1; i < s.points.size(); ++i)
      if (epoch <= s.points[i].first) {
        const auto [e0, f0] = s.points[i - 1];
        const auto [e1, f1] = s.points[i];
        return opt.lr * (f0 + (f1 - f0) * (epoch - e0) / (e1 - e0));
      }
    return opt.lr * s.points.back().second;
  }
  return opt.lr;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(Optimizer)

}  // namespace lowmem
