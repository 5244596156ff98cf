"""PyTorch twins of lowmem models, built from a lowmem config alone (shared by the PyTorch reference tests).

Each lowmem layer spec becomes one torch module in float64; submodule names are lowmem's HDF5 names (a residual
block's conv1, bn1 (gn1), relu1 or pn1, conv2, bn2 (gn2), shortcut, shortcut_bn (shortcut_gn); a coupling's f and g; an invertible chain's 0, 1, ...), so
weights can be loaded by name. The reversible building blocks are written here from their definitions in
PAPERS.md (section 3), independently of lowmem's code.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """torchvision-style post-activation block; submodule names are lowmem's HDF5 names. groups None: batch norm;
    else group norm with that many groups (0: one per channel), and with proxy, the first norm without affine
    followed by Proxy Norm (ReLU) in place of the first ReLU."""

    def __init__(self, cin, out, stride, groups=None, proxy=False):
        super().__init__()
        kind = "bn" if groups is None else "gn"

        def norm(affine=True):
            if groups is None:
                return nn.BatchNorm2d(out)
            return nn.GroupNorm(groups or out, out, affine=affine)

        self.conv1 = nn.Conv2d(cin, out, 3, stride, 1, bias=False)
        setattr(self, kind + "1", norm(affine=not proxy))
        setattr(self, "pn1" if proxy else "relu1", ProxyNorm(out, 0.0, 0.03) if proxy else nn.ReLU())
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        setattr(self, kind + "2", norm())
        self.names = (kind + "1", "pn1" if proxy else "relu1", kind + "2", "shortcut_" + kind)
        if stride != 1 or cin != out:
            self.shortcut = nn.Conv2d(cin, out, 1, stride, 0, bias=False)
            setattr(self, "shortcut_" + kind, norm())

    def forward(self, x):
        n1, act1, n2, ns = (getattr(self, name, None) for name in self.names)
        y = n2(self.conv2(act1(n1(self.conv1(x)))))
        s = ns(self.shortcut(x)) if hasattr(self, "shortcut") else x
        return F.relu(y + s)


class InvBatchNorm(nn.Module):
    """Invertible batch norm (Hascoet et al.): scale |gamma| + scale_eps; batch statistics in training (which update
    running ones as nn.BatchNorm2d does, unbiased variance), the running statistics in evaluation."""

    def __init__(self, channels, eps, scale_eps, momentum=0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.eps, self.scale_eps, self.momentum = eps, scale_eps, momentum

    def forward(self, x):
        if self.training:
            mean = x.mean(dim=(0, 2, 3))
            var = x.var(dim=(0, 2, 3), unbiased=False)
            n = x.numel() / x.shape[1]
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / max(n - 1, 1))
        else:
            mean, var = self.running_mean, self.running_var
        scale = (self.weight.abs() + self.scale_eps).view(1, -1, 1, 1)
        return scale * (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + self.eps) \
            + self.bias.view(1, -1, 1, 1)


class Coupling(nn.Module):
    """RevNet additive coupling, or Real NVP affine coupling with Glow's scale sigmoid(a + 2); on a sequence the
    halves are those of each position's features (a reversible Transformer block)."""

    def __init__(self, f, g, affine):
        super().__init__()
        self.f, self.g, self.affine = f, g, affine

    def step(self, x, net_out):
        if not self.affine:
            return x + net_out
        a, t = net_out.chunk(2, dim=self.dim(x))
        return torch.sigmoid(a + 2) * x + t

    @staticmethod
    def dim(x):
        """The split axis: an image batch's channels, a sequence batch's (N, T, F) features."""
        return 1 if x.dim() == 4 else -1

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=self.dim(x))
        y1 = self.step(x1, self.f(x2))
        y2 = self.step(x2, self.g(y1))
        return torch.cat([y1, y2], dim=self.dim(x))


class PixelShuffle(nn.Module):
    """Space to channel: (C, H, W) -> (4C, H/2, W/2), channel 4c + 2a + b from pixel (2i + a, 2j + b)."""

    def forward(self, x):
        return F.pixel_unshuffle(x, 2)


class ProxyNorm(nn.Module):
    """Proxy Norm (Labatie et al. 2021) from the paper's formulas, after a group norm without affine:
    y = (act(w x + b) - mu) / sqrt(var + eps), where mu and var are the mean and biased variance over n = 200 points
    of act(w Y_i + b), Y_i = proxy_bias + (1 + proxy_weight) q_i, q_i = sqrt(2) erfinv(2 (i + 0.5) / n - 1)."""

    def __init__(self, channels, slope, eps, n=200):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, dtype=torch.float64))
        self.bias = nn.Parameter(torch.zeros(channels, dtype=torch.float64))
        self.proxy_weight = nn.Parameter(torch.zeros(channels, dtype=torch.float64))
        self.proxy_bias = nn.Parameter(torch.zeros(channels, dtype=torch.float64))
        i = torch.arange(n, dtype=torch.float64)
        self.register_buffer("q", 2 ** 0.5 * torch.special.erfinv(2 * (i + 0.5) / n - 1))
        self.slope, self.eps = slope, eps

    def forward(self, x):
        act = lambda z: F.leaky_relu(z, self.slope)  # slope 0: ReLU
        y_proxy = self.proxy_bias[:, None] + (1 + self.proxy_weight[:, None]) * self.q[None, :]  # (C, n)
        a_proxy = act(self.weight[:, None] * y_proxy + self.bias[:, None])
        mean, var = a_proxy.mean(1), a_proxy.var(1, unbiased=False)
        per_channel = (1, -1) + (1,) * (x.dim() - 2)
        a = act(x * self.weight.view(per_channel) + self.bias.view(per_channel))
        return (a - mean.view(per_channel)) / torch.sqrt(var.view(per_channel) + self.eps)


class Positional(nn.Module):
    """lowmem's positional: x (N, T, F) + weight[:T], weight (positions, F)."""

    def __init__(self, positions, width):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(positions, width))

    def forward(self, x):
        return x + self.weight[: x.shape[1]]


class CausalSelfAttention(nn.MultiheadAttention):
    """lowmem's attention: nn.MultiheadAttention (its parameter names) on x (N, T, F), position t seeing <= t."""

    def __init__(self, width, heads):
        super().__init__(width, heads, batch_first=True)

    def forward(self, x):
        t = x.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        return super().forward(x, x, x, attn_mask=mask, need_weights=False)[0]


class CausalHeadConv(nn.Module):
    """lowmem's lightweight_conv and dynamic_conv (Wu et al. 2019, "Pay Less Attention with Lightweight and Dynamic
    Convolutions"), written from their formulas, causal, on x (N, T, F): H heads of F / H consecutive channels,
    y[t, c] = sum_j W[t, h(c), j] x[t - K + 1 + j, c] (x = 0 left of the sequence) + bias[c], with W a softmax over
    the K taps of a learned weight (H, K) (lightweight) or of weight_linear(x[t]) seen as (H, K) (dynamic)."""

    def __init__(self, width, heads, kernel, dynamic, bias):
        super().__init__()
        self.heads, self.kernel, self.dynamic = heads, kernel, dynamic
        if dynamic:
            self.weight_linear = nn.Linear(width, heads * kernel)
        else:
            self.weight = nn.Parameter(torch.zeros(heads, kernel))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None

    def forward(self, x):
        n, t, f = x.shape
        h, k = self.heads, self.kernel
        logits = self.weight_linear(x).view(n, t, h, k) if self.dynamic else self.weight.expand(n, t, h, k)
        w = torch.softmax(logits, dim=-1).repeat_interleave(f // h, dim=2)  # (N, T, F, K): channel c's head's taps
        windows = F.pad(x, (0, 0, k - 1, 0)).unfold(1, k, 1)  # (N, T, F, K): [s, t, c, j] = x[s, t - K + 1 + j, c]
        y = (w * windows).sum(-1)
        return y if self.bias is None else y + self.bias


class TransformerBlock(nn.Module):
    """lowmem's transformer_block (pre-norm): h = x + attn(ln1(x)), y = h + fc2(gelu(fc1(ln2(h)))); its conv_block:
    the same with a convolution, named conv, for attn."""

    def __init__(self, width, heads, mlp, eps, conv=None):
        super().__init__()
        self.mixer = "attn" if conv is None else "conv"
        self.ln1 = nn.LayerNorm(width, eps=eps)
        setattr(self, self.mixer, CausalSelfAttention(width, heads) if conv is None else conv)
        self.ln2 = nn.LayerNorm(width, eps=eps)
        self.fc1 = nn.Linear(width, mlp * width)
        self.gelu = nn.GELU()
        self.fc2 = nn.Linear(mlp * width, width)

    def forward(self, x):
        h = x + getattr(self, self.mixer)(self.ln1(x))
        return h + self.fc2(self.gelu(self.fc1(self.ln2(h))))


class LstmOutput(nn.LSTM):
    """lowmem's lstm: nn.LSTM (batch first) giving the last layer's h at every step. bptt > 0: truncated
    backpropagation through time, the sequence run in chunks of bptt steps with the state carried over detached."""

    def __init__(self, *args, bptt=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.bptt = bptt

    def forward(self, x):
        if not self.bptt:
            return super().forward(x)[0]
        outputs, state = [], None
        for first in range(0, x.shape[1], self.bptt):
            y, state = super().forward(x[:, first:first + self.bptt], state)
            outputs.append(y)
            state = tuple(s.detach() for s in state)
        return torch.cat(outputs, dim=1)


def make_chain(specs, shape, vocab=None):
    """nn.Sequential of the specs on per-sample input `shape`; returns it and its output shape. vocab: a text
    model's (its embedding's input is token ids)."""
    layers = []
    for spec in specs:
        layers.append(make_layer(spec, shape, vocab).double())
        with torch.no_grad():
            dtype = torch.long if spec["type"] == "embedding" else torch.float64
            shape = list(layers[-1].eval()(torch.zeros(2, *shape, dtype=dtype)).shape[1:])
    return nn.Sequential(*layers), shape


def make_layer(spec, shape, vocab=None):
    """One torch module for one lowmem layer spec (lowmem's defaults applied); shape excludes the batch. On a
    sequence (T, F), linear and the norms act on each position's F features."""
    t = spec["type"]
    if t == "embedding":
        return nn.Embedding(vocab, spec["out"])
    if t == "positional":
        return Positional(shape[0], shape[1])
    if t == "attention":
        return CausalSelfAttention(shape[1], spec.get("heads", 1))
    if t == "transformer_block":
        return TransformerBlock(shape[1], spec.get("heads", 1), spec.get("mlp", 4), spec.get("eps", 1e-5))
    if t in ("lightweight_conv", "dynamic_conv"):
        return CausalHeadConv(shape[1], spec.get("heads", 1), spec.get("kernel", 7), t == "dynamic_conv",
                              spec.get("bias", False))
    if t == "conv_block":
        conv = CausalHeadConv(shape[1], spec.get("heads", 1), spec.get("kernel", 7),
                              spec.get("conv", "dynamic") == "dynamic", False)
        return TransformerBlock(shape[1], None, spec.get("mlp", 4), spec.get("eps", 1e-5), conv)
    if t == "lstm":
        return LstmOutput(shape[1], spec["hidden"], spec.get("num_layers", 1), batch_first=True,
                          bptt=spec.get("bptt", 0))
    if t == "gelu":
        return nn.GELU()
    if len(shape) == 2 and t == "linear":
        return nn.Linear(shape[1], spec["out"], bias=spec.get("bias", True))
    if len(shape) == 2 and (t == "layernorm" or (t == "groupnorm" and spec.get("groups") == 1)):
        return nn.LayerNorm(shape[1], eps=spec.get("eps", 1e-5), elementwise_affine=spec.get("affine", True))
    if t == "conv":
        return nn.Conv2d(shape[0], spec["out"], spec["kernel"], spec.get("stride", 1), spec.get("pad", 0),
                         bias=spec.get("bias", True))
    if t == "linear":
        return nn.Linear(shape[0], spec["out"], bias=spec.get("bias", True))
    if t == "batchnorm":
        bn = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return bn(shape[0], eps=spec.get("eps", 1e-5), momentum=spec.get("momentum", 0.1))
    if t in ("groupnorm", "layernorm", "instancenorm"):
        groups = {"groupnorm": spec.get("groups"), "layernorm": 1, "instancenorm": shape[0]}[t]
        return nn.GroupNorm(groups, shape[0], eps=spec.get("eps", 1e-5), affine=spec.get("affine", True))
    if t == "proxy_norm":
        slope = spec.get("slope", 0.01) if spec.get("activation", "relu") == "leaky_relu" else 0.0
        return ProxyNorm(shape[0], slope, spec.get("eps", 0.03))
    if t == "residual":
        norm = spec.get("norm", "batchnorm")
        groups = {"batchnorm": None, "groupnorm": spec.get("groups"), "layernorm": 1, "instancenorm": 0}[norm]
        return BasicBlock(shape[0], spec["out"], spec.get("stride", 1), groups, spec.get("proxy", False))
    if t == "inv_batchnorm":
        return InvBatchNorm(shape[0], spec.get("eps", 1e-5), spec.get("scale_eps", 1e-4), spec.get("momentum", 0.1))
    if t in ("coupling", "affine_coupling"):
        half = [shape[0], shape[1] // 2] if len(shape) == 2 else [shape[0] // 2, *shape[1:]]
        return Coupling(make_chain(spec["f"], half)[0], make_chain(spec["g"], half)[0], t == "affine_coupling")
    if t == "invertible":
        return make_chain(spec["layers"], shape)[0]
    if t == "pixel_shuffle":
        return PixelShuffle()
    if t == "maxpool":
        return nn.MaxPool2d(spec["kernel"], spec.get("stride", spec["kernel"]))
    if t == "avgpool":
        return nn.AvgPool2d(spec["kernel"], spec.get("stride", spec["kernel"]))
    simple = {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(spec.get("slope", 0.01)), "flatten": nn.Flatten(),
              "global_avgpool": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())}
    return simple[t]


def build_model(config):
    """nn.Sequential in float64, training mode, built from the config alone (not from the HDF5 shapes). A text
    model (data "text") maps token ids (N, T) to scores (N, T, classes)."""
    m = config["model"]
    text = config.get("data", {}).get("dataset") == "text"
    model, shape = make_chain(m["layers"], list(m["input"]), m["classes"] if text else None)
    assert shape == ([m["input"][0]] if text else []) + [m["classes"]], f"model output {shape}"
    return model.train()
