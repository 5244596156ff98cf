#include "layer_checker.hpp"

#include <algorithm>
#include <cmath>

namespace lowmem::testing {

namespace {

template <class T> Tensor<T> random_tensor(const Shape& shape, Rng& rng) {
  Tensor<T> t(shape, MemoryCategory::workspace);
  for (index_t i = 0; i < t.numel(); ++i) t[i] = round_to<T>(rng.normal());
  return t;
}

// L = sum(r * y), accumulated in T (mp: exact enough that the difference quotient is limited by h, not by sums).
template <class T> T projected_loss(Layer<T>& layer, const Tensor<T>& x, const Tensor<T>& r) {
  const RunContext ctx{true, Accumulate::f32};
  const Tensor<T> y = layer.forward(x, ctx);
  T sum(0);
  for (index_t i = 0; i < y.numel(); ++i) sum += r[i] * y[i];
  return sum;  // no backward: what forward kept is replaced by the next forward
}

template <class T>
GradientReport compare(const std::string& name, Tensor<T>& values, const Tensor<T>& analytic, Layer<T>& layer,
                       const Tensor<T>& x, const Tensor<T>& r, double step) {
  const T h = round_to<T>(step);
  double max_error = 0, max_analytic = 0;
  for (index_t i = 0; i < values.numel(); ++i) {
    const T saved = values[i];
    values[i] = saved + h;
    const T plus = projected_loss(layer, x, r);
    values[i] = saved - h;
    const T minus = projected_loss(layer, x, r);
    values[i] = saved;
    const T numeric = (plus - minus) / (h + h);
    max_error = std::max(max_error, std::fabs(round_to<double>(T(numeric - analytic[i]))));
    max_analytic = std::max(max_analytic, std::fabs(round_to<double>(analytic[i])));
  }
  return {name, max_analytic > 0 ? max_error / max_analytic : max_error};
}

}  // namespace

template <class T>
std::vector<GradientReport> check_layer_gradients(const LayerFactory<T>& make, const Shape& input, double step,
                                                  std::uint64_t seed, index_t vocab) {
  std::unique_ptr<Layer<T>> layer = make();
  Rng rng(seed);
  layer->initialize(rng);
  // Perturb parameters away from their initial values (e.g. batch-norm gamma = 1, beta = 0) so every path is tested.
  for (Param<T>* p : layer->params())
    for (index_t i = 0; i < p->value.numel(); ++i) p->value[i] = p->value[i] + round_to<T>(0.5 * rng.normal());
  const Tensor<T> x = draw_input<T>(input, vocab, rng);
  const RunContext ctx{true, Accumulate::f32};
  const Tensor<T> y = layer->forward(x, ctx);
  const Tensor<T> r = random_tensor<T>(y.shape(), rng);
  const Tensor<T> dx = layer->backward(r, ctx, vocab == 0);

  std::vector<GradientReport> reports;
  Tensor<T> x_probe = x.clone(MemoryCategory::workspace);
  if (vocab == 0) reports.push_back(compare<T>("input", x_probe, dx, *layer, x_probe, r, step));
  // Snapshot the analytic gradients: they are what the finite differences are compared with.
  for (Param<T>* p : layer->params()) {
    const Tensor<T> analytic = p->grad.clone(MemoryCategory::workspace);
    reports.push_back(compare<T>(p->name, p->value, analytic, *layer, x, r, step));
  }
  return reports;
}

template <class T>
std::vector<GradientReport> compare_with_multiprecision(const LayerFactory<T>& make, const LayerFactory<mp>& reference,
                                                        const Shape& input, std::uint64_t seed, index_t vocab) {
  std::unique_ptr<Layer<T>> layer = make();
  std::unique_ptr<Layer<mp>> exact = reference();
  Rng exact_rng(seed);
  exact->initialize(exact_rng);  // as every precision of a run is: what is not a parameter (dropout's key) agrees
  Rng rng(seed);
  layer->initialize(rng);
  const auto params = layer->params();
  const auto exact_params = exact->params();
  for (std::size_t k = 0; k < params.size(); ++k)
    for (index_t i = 0; i < params[k]->value.numel(); ++i) {
      params[k]->value[i] = params[k]->value[i] + round_to<T>(0.5 * rng.normal());
      exact_params[k]->value[i] = round_to<mp>(params[k]->value[i]);
    }
  auto widened = [](const Tensor<T>& t) {
    Tensor<mp> w(t.shape(), MemoryCategory::workspace);
    for (index_t i = 0; i < t.numel(); ++i) w[i] = round_to<mp>(t[i]);
    return w;
  };
  auto report = [](const std::string& name, const Tensor<T>& got, const Tensor<mp>& want) {
    mp worst = 0, largest = 0;
    for (index_t i = 0; i < want.numel(); ++i) {
      worst = std::max(worst, mp(abs(round_to<mp>(got[i]) - want[i])));
      largest = std::max(largest, mp(abs(want[i])));
    }
    return GradientReport{name, to_double(largest > 0 ? mp(worst / largest) : worst)};
  };
  const RunContext ctx{true, Accumulate::f32};
  const Tensor<T> x = draw_input<T>(input, vocab, rng);
  const Tensor<T> y = layer->forward(x, ctx);
  const Tensor<mp> y_exact = exact->forward(widened(x), ctx);
  const Tensor<T> r = random_tensor<T>(y.shape(), rng);
  const Tensor<T> dx = layer->backward(r, ctx, vocab == 0);
  const Tensor<mp> dx_exact = exact->backward(widened(r), ctx, vocab == 0);
  std::vector<GradientReport> reports{report("output", y, y_exact)};
  if (vocab == 0) reports.push_back(report("input", dx, dx_exact));
  for (std::size_t k = 0; k < params.size(); ++k)
    reports.push_back(report(params[k]->name, params[k]->grad, exact_params[k]->grad));
  return reports;
}

template std::vector<GradientReport> compare_with_multiprecision<double>(const LayerFactory<double>&,
                                                                         const LayerFactory<mp>&, const Shape&,
                                                                         std::uint64_t, index_t);
template std::vector<GradientReport> compare_with_multiprecision<dd>(const LayerFactory<dd>&, const LayerFactory<mp>&,
                                                                     const Shape&, std::uint64_t, index_t);
template std::vector<GradientReport> check_layer_gradients<dd>(const LayerFactory<dd>&, const Shape&, double,
                                                               std::uint64_t, index_t);
template std::vector<GradientReport> check_layer_gradients<double>(const LayerFactory<double>&, const Shape&, double,
                                                                   std::uint64_t, index_t);
template std::vector<GradientReport> check_layer_gradients<mp>(const LayerFactory<mp>&, const Shape&, double,
                                                               std::uint64_t, index_t);

}  // namespace lowmem::testing
