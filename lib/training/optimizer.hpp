#pragma once
// SGD (momentum, Nesterov, weight decay) and Adam, with PyTorch's update rules, and the learning-rate schedules.
// State tensors live in the run's precision and are charged to the ledger as optimizer state; each update is
// computed in the wide type (float for 16-bit storage) and rounded once into the parameter.
#include <vector>

#include "layers/layer.hpp"
#include "techniques/technique.hpp"
#include "training/run_config.hpp"

namespace lowmem {

template <class T> class Optimizer : public OptimizerBase<T> {
 public:
  Optimizer(const OptimizerSpec& spec, std::vector<Param<T>*> params);
  void step(double lr) override;  // one update of every parameter from its gradient
  std::int64_t steps_taken() const { return steps_; }
  // The state tensors of parameter k (momentum; Adam's m and v), aligned with its value.
  std::vector<Tensor<T>*> state(std::size_t k) override;
  void archive(StateArchive& a, const std::string& prefix) override;

 private:
  OptimizerSpec spec_;
  std::vector<Param<T>*> params_;
  std::vector<Tensor<T>> first_, second_;  // SGD: momentum buffer; Adam: m and v
  std::int64_t steps_ = 0;
};

// Learning rate at optimizer step `step` (0-based), for `steps_per_epoch` and `total_steps`.
double learning_rate(const OptimizerSpec& opt, const ScheduleSpec& schedule, std::int64_t step,
                     std::int64_t steps_per_epoch, std::int64_t total_steps);

}  // namespace lowmem
