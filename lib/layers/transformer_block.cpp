#include "layers/transformer_block.hpp"

#include "layers/activations.hpp"
#include "layers/attention.hpp"
#include "layers/dynamic_conv.hpp"
#include "layers/groupnorm.hpp"
#include "layers/linear.hpp"
#include "layers/position_wise.hpp"

namespace lowmem {

namespace {

// a += b over a's buffer (a's own: the branch's output), one rounding per value.
template <class T> void add_into(Tensor<T>& a, const Tensor<T>& b) {
  a.make_own(MemoryCategory::workspace);
  for (index_t i = 0; i < (a.is_dry() ? 0 : a.numel()); ++i) a[i] = T(a[i] + b[i]);
}

}  // namespace

template <class T>
TransformerBlock<T>::TransformerBlock(std::string label, index_t width, index_t heads, index_t mlp_ratio, double eps)
    : Layer<T>(std::move(label)), kind_("transformer_block"), mixer_name_("attn") {
  make_layers([&] { return std::make_unique<Attention<T>>(this->label() + " attn", width, heads); }, width, mlp_ratio,
              eps);
}

template <class T>
TransformerBlock<T>::TransformerBlock(std::string label, DynamicConvSpec conv, index_t mlp_ratio, double eps)
    : Layer<T>(std::move(label)), kind_("conv_block"), mixer_name_("conv") {
  make_layers([&] { return std::make_unique<DynamicConv<T>>(this->label() + " conv", conv); }, conv.width, mlp_ratio,
              eps);
}

// In the order of the forward pass (the order their parameters are allocated in).
template <class T>
void TransformerBlock<T>::make_layers(const std::function<std::unique_ptr<Layer<T>>()>& make_mixer, index_t width,
                                      index_t mlp_ratio, double eps) {
  const std::string& l = this->label();
  auto per_position = [](std::unique_ptr<Layer<T>> layer) { return std::make_unique<PositionWise<T>>(std::move(layer)); };
  ln1_ = per_position(std::make_unique<GroupNorm<T>>(l + " ln1", width, 1, eps));
  mix_ = make_mixer();
  ln2_ = per_position(std::make_unique<GroupNorm<T>>(l + " ln2", width, 1, eps));
  fc1_ = per_position(std::make_unique<Linear<T>>(l + " fc1", width, mlp_ratio * width, true));
  gelu_ = std::make_unique<Gelu<T>>(l + " gelu");
  fc2_ = per_position(std::make_unique<Linear<T>>(l + " fc2", mlp_ratio * width, width, true));
}

template <class T> Shape TransformerBlock<T>::output_shape(const Shape& in) const {
  const Shape h = mix_->output_shape(ln1_->output_shape(in));
  return fc2_->output_shape(gelu_->output_shape(fc1_->output_shape(ln2_->output_shape(h))));
}

template <class T> std::vector<std::pair<std::string, Layer<T>*>> TransformerBlock<T>::children() {
  return {{"ln1", ln1_.get()}, {mixer_name_, mix_.get()}, {"ln2", ln2_.get()},
          {"fc1", fc1_.get()}, {"gelu", gelu_.get()}, {"fc2", fc2_.get()}};
}

template <class T> double TransformerBlock<T>::forward_flops(const Shape& in) const {
  const Shape hidden = fc1_->output_shape(in);
  return ln1_->forward_flops(in) + mix_->forward_flops(in) + ln2_->forward_flops(in) + fc1_->forward_flops(in) +
         gelu_->forward_flops(hidden) + fc2_->forward_flops(hidden) + 2.0 * static_cast<double>(in.numel());
}

// One statement per layer (a by-value argument lives to the end of its full expression: see ResidualBlock).
template <class T> Tensor<T> TransformerBlock<T>::forward(Tensor<T> x, const RunContext& ctx) {
  Tensor<T> h = ln1_->forward(x, ctx);  // x held for the sum
  h = mix_->forward(std::move(h), ctx);
  add_into(h, x);
  x = Tensor<T>();
  Tensor<T> m = ln2_->forward(h, ctx);  // h held for the sum
  m = fc1_->forward(std::move(m), ctx);
  m = gelu_->forward(std::move(m), ctx);
  m = fc2_->forward(std::move(m), ctx);
  add_into(m, h);
  return m;
}

// dh = dy + the MLP branch's dL/dh; dx = dh + the mixer branch's dL/dx.
template <class T> Tensor<T> TransformerBlock<T>::backward(Tensor<T> dy, const RunContext& ctx, bool want_input_grad) {
  Tensor<T> dm = fc2_->backward(dy, ctx, true);  // dy held for the sum
  dm = gelu_->backward(std::move(dm), ctx, true);
  dm = fc1_->backward(std::move(dm), ctx, true);
  dm = ln2_->backward(std::move(dm), ctx, true);
  add_into(dm, dy);
  dy = Tensor<T>();
  Tensor<T> dx = mix_->backward(dm, ctx, true);  // dh held for the sum
  dx = ln1_->backward(std::move(dx), ctx, want_input_grad);
  if (!want_input_grad) return Tensor<T>();
  add_into(dx, dm);
  return dx;
}

LOWMEM_INSTANTIATE_FOR_PRECISIONS(TransformerBlock)

}  // namespace lowmem
