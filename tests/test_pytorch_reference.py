#!/usr/bin/env python3
"""Independent check of lowmem's forward and backward pass against PyTorch.

usage: test_pytorch_reference.py LOWMEM_BINARY

For each model below (a plain CNN, a residual net with batch norm and one with group/layer norm and Proxy Norm, a
group-norm net, a Proxy Norm net, and a reversible net with every invertible block: invertible
batch norm, leaky ReLU, additive and affine coupling, pixel shuffle, an invertible chain; the last once with
stored activations and once with backprop by reconstruction; and two character models on a corpus of 5 symbols:
two pre-norm Transformer blocks; embedding, attention, GELU, a per-position linear layer, a 2-layer LSTM and
layer norm; a third with causal dynamic and lightweight convolutions and conv blocks; an LSTM truncated and one
checkpointed over time; and a reversible Transformer block, stored and rebuilt), runs lowmem's "gradient" study (one forward + backward pass in training mode on the first
train.batch examples) in f64 and f32, then rebuilds the same network in PyTorch in float64 from each run's own
weights and input and compares: logits, loss (mean cross-entropy) and every parameter gradient, as
relative error = max|lowmem - torch| / max|torch| per tensor. Tolerances: 1e-10 for the f64 run, 1e-4 for the
f32 run. Also checks that
  - the datasets under layers/ are exactly the parameters (and gradients) the config implies;
  - the f32 run's weights are the f64 run's weights rounded once to float32 (bitwise);
  - the comparison can fail: one gradient element perturbed by 1e-6 relative exceeds the f64 tolerance.
The gradient of a bias feeding straight into batch norm is exactly zero in exact arithmetic; there only roundoff
is left, so it is checked as max|lowmem - torch| / max|grad_weight of the same layer| instead.
Exits non-zero on any failure.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from torch_models import build_model

TOLERANCE = {"f64": 1e-10, "f32": 1e-4}
K = 5  # classes


def conv(out, k, stride=1, pad=0, bias=True):
    return {"type": "conv", "out": out, "kernel": k, "stride": stride, "pad": pad, "bias": bias}


PLAIN_CNN = [conv(4, 3, pad=1), {"type": "batchnorm"}, {"type": "relu"},
             conv(6, 3, stride=2, pad=1, bias=False), {"type": "batchnorm"}, {"type": "leaky_relu", "slope": 0.1},
             {"type": "maxpool", "kernel": 2},
             conv(5, 3, pad=1), {"type": "relu"}, {"type": "avgpool", "kernel": 2, "stride": 2},
             {"type": "flatten"}, {"type": "linear", "out": 7}, {"type": "batchnorm"}, {"type": "relu"},
             {"type": "linear", "out": K}]
RESIDUAL_NET = [conv(4, 3, pad=1, bias=False), {"type": "batchnorm"}, {"type": "relu"},
                {"type": "residual", "out": 4, "stride": 1}, {"type": "residual", "out": 8, "stride": 2},
                {"type": "global_avgpool"}, {"type": "linear", "out": K}]
HALF_NET = [conv(2, 3, pad=1, bias=False), {"type": "batchnorm"}, {"type": "leaky_relu", "slope": 0.2},
            conv(2, 3, pad=1, bias=False), {"type": "batchnorm"}]
REVERSIBLE_NET = [conv(4, 3, pad=1, bias=False), {"type": "inv_batchnorm"}, {"type": "leaky_relu", "slope": 0.2},
                  {"type": "coupling", "f": HALF_NET, "g": HALF_NET},
                  {"type": "pixel_shuffle"},
                  {"type": "affine_coupling", "f": [conv(16, 3, pad=1)],
                   "g": [conv(16, 3, pad=1, bias=False), {"type": "batchnorm"}]},
                  {"type": "invertible", "layers": [
                      {"type": "coupling", "f": [conv(8, 3, pad=1, bias=False)], "g": [conv(8, 3, pad=1, bias=False)]},
                      {"type": "inv_batchnorm"}, {"type": "leaky_relu", "slope": 0.3}]},
                  {"type": "global_avgpool"}, {"type": "linear", "out": K}]
# Group norm in 2-d (2 groups of 3 channels, then one group per channel: instance norm) and in 1-d (layer norm).
GROUPNORM_NET = [conv(6, 3, pad=1), {"type": "groupnorm", "groups": 2}, {"type": "relu"},
                 conv(4, 3, stride=2, pad=1, bias=False), {"type": "groupnorm", "groups": 4}, {"type": "relu"},
                 {"type": "flatten"}, {"type": "linear", "out": 7}, {"type": "groupnorm", "groups": 1},
                 {"type": "relu"}, {"type": "linear", "out": K}]
# Proxy Norm after group norm (2 groups), instance norm and layer norm without their own affine, with ReLU and
# leaky ReLU; in 2-d and in 1-d.
PROXY_NORM_NET = [conv(6, 3, pad=1), {"type": "groupnorm", "groups": 2, "affine": False}, {"type": "proxy_norm"},
                  conv(4, 3, stride=2, pad=1, bias=False), {"type": "instancenorm", "affine": False},
                  {"type": "proxy_norm", "activation": "leaky_relu", "slope": 0.1},
                  {"type": "flatten"}, {"type": "linear", "out": 7}, {"type": "layernorm", "affine": False},
                  {"type": "proxy_norm"}, {"type": "linear", "out": K}]
# Residual blocks with group norm + Proxy Norm (with a projection shortcut) and with layer norm.
RESIDUAL_NORM_NET = [conv(4, 3, pad=1, bias=False), {"type": "groupnorm", "groups": 2}, {"type": "relu"},
                     {"type": "residual", "out": 8, "stride": 2, "norm": "groupnorm", "groups": 2, "proxy": True},
                     {"type": "residual", "out": 8, "norm": "layernorm"},
                     {"type": "global_avgpool"}, {"type": "linear", "out": K}]
# Text models (data "text", a corpus of K symbols written by the test, windows of 6): token ids in, scores of the
# next symbol at every position out, the loss averaged over all positions.
TEXT = "text"
TEXT_TRANSFORMER = [{"type": "embedding", "out": 8}, {"type": "positional"}, {"type": "transformer_block", "heads": 2},
                    {"type": "transformer_block", "heads": 1, "mlp": 2}, {"type": "layernorm"},
                    {"type": "linear", "out": K}]
TEXT_LAYERS = [{"type": "embedding", "out": 6}, {"type": "attention", "heads": 3}, {"type": "gelu"},
               {"type": "linear", "out": 8}, {"type": "lstm", "hidden": 5, "num_layers": 2},
               {"type": "layernorm", "affine": False}, {"type": "linear", "out": K, "bias": False}]
# A 2-layer LSTM truncated every 4 steps (windows of 6: chunks of 4 and 2 steps), and checkpointed over time.
TEXT_LSTM_TRUNCATED = [{"type": "embedding", "out": 4}, {"type": "lstm", "hidden": 5, "num_layers": 2, "bptt": 4},
                       {"type": "linear", "out": K}]
# A reversible Transformer block (additive coupling on the halves of the width): F = layer norm + attention, G =
# layer norm + MLP; with stored activations and rebuilt by backprop by reconstruction.
TEXT_REVERSIBLE = [{"type": "embedding", "out": 8}, {"type": "positional"},
                   {"type": "coupling", "f": [{"type": "layernorm"}, {"type": "attention", "heads": 2}],
                    "g": [{"type": "layernorm"}, {"type": "linear", "out": 8}, {"type": "gelu"},
                          {"type": "linear", "out": 4}]},
                   {"type": "layernorm"}, {"type": "linear", "out": K}]
# Causal convolutions (Wu et al. 2019): dynamic with bias, lightweight with 9 taps on windows of 6 (every tap
# window reaches into the zero padding), and the pre-norm blocks with either for attention.
TEXT_CONVOLUTIONS = [{"type": "embedding", "out": 8}, {"type": "positional"},
                     {"type": "dynamic_conv", "heads": 2, "kernel": 3, "bias": True}, {"type": "gelu"},
                     {"type": "lightweight_conv", "heads": 4, "kernel": 9}, {"type": "layernorm"},
                     {"type": "lightweight_conv", "heads": 2, "kernel": 2, "bias": True},
                     {"type": "conv_block", "heads": 2, "kernel": 4},
                     {"type": "conv_block", "heads": 1, "kernel": 3, "conv": "lightweight", "mlp": 2},
                     {"type": "layernorm"}, {"type": "linear", "out": K}]
# name: (input shape, layers, technique: a type or a technique object). The reversible network runs twice: with stored activations, and with
# backprop by reconstruction (lowmem rebuilds every activation of the invertible layers from the last one).
CASES = {"plain_cnn": ([2, 16, 16], PLAIN_CNN, "store_all"), "residual_net": ([3, 8, 8], RESIDUAL_NET, "store_all"),
         "groupnorm_net": ([2, 8, 8], GROUPNORM_NET, "store_all"),
         "proxy_norm_net": ([2, 8, 8], PROXY_NORM_NET, "store_all"),
         "residual_norm_net": ([3, 8, 8], RESIDUAL_NORM_NET, "store_all"),
         "reversible_net": ([1, 8, 8], REVERSIBLE_NET, "store_all"),
         "reversible_net_rebuilt": ([1, 8, 8], REVERSIBLE_NET, "reversible"),
         "text_transformer": (TEXT, TEXT_TRANSFORMER, "store_all"), "text_layers": (TEXT, TEXT_LAYERS, "store_all"),
         "text_lstm_truncated": (TEXT, TEXT_LSTM_TRUNCATED, "store_all"),
         "text_lstm_checkpointed": (TEXT, TEXT_LAYERS, {"type": "checkpoint", "over": "time", "schedule": "revolve",
                                                        "slots": 2}),
         "text_reversible": (TEXT, TEXT_REVERSIBLE, "store_all"),
         "text_reversible_rebuilt": (TEXT, TEXT_REVERSIBLE, "reversible"),
         "text_convolutions": (TEXT, TEXT_CONVOLUTIONS, "store_all")}


def zero_grad_biases(layers):
    """HDF5 names of biases that feed directly into batch norm (their exact gradient is 0)."""
    return {f"layers/{i}/bias" for i, spec in enumerate(layers[:-1])
            if spec["type"] in ("conv", "linear") and spec.get("bias", True) and layers[i + 1]["type"] == "batchnorm"}


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def reference(model, group):
    """Loads the run's weights into model, runs forward+backward in float64; returns {name: torch value}."""
    params = {f"layers/{n.replace('.', '/')}": p for n, p in model.named_parameters()}
    stored = set()
    group["layers"].visit(lambda n, g=group: stored.add(f"layers/{n}") if isinstance(g[f"layers/{n}"], h5py.Dataset) else None)
    expected = set(params) | {n.rsplit("/", 1)[0] + "/grad_" + n.rsplit("/", 1)[1] for n in params}
    assert stored == expected, f"HDF5 layers: missing {sorted(expected - stored)}, unexpected {sorted(stored - expected)}"
    with torch.no_grad():
        for name, p in params.items():
            w = torch.from_numpy(group[name][()].astype(np.float64))
            assert w.shape == p.shape, f"{name}: lowmem shape {tuple(w.shape)}, config implies {tuple(p.shape)}"
            p.copy_(w)
    model.zero_grad()
    labels = group["labels"][()]
    assert np.all(labels == np.round(labels)), "labels are not integers"
    text = isinstance(model[0], torch.nn.Embedding)  # token ids in, scores at every position out
    x = torch.from_numpy(group["input"][()].astype(np.int64 if text else np.float64))
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(labels.astype(np.int64)).reshape(-1))
    loss.backward()
    out = {"logits": logits.detach().numpy(), "loss": loss.detach().numpy().reshape(1)}
    for name, p in params.items():
        prefix, leaf = name.rsplit("/", 1)
        out[f"{prefix}/grad_{leaf}"] = p.grad.numpy()
    return out


def compare(group, ref, zero_biases):
    """{tensor name: error} for logits, loss and every gradient (see the docstring for the zero-bias case)."""
    errors = {}
    for name, b in ref.items():
        a = group[name][()]
        assert a.shape == b.shape, f"{name}: shape {a.shape} vs torch {b.shape}"
        prefix, _, leaf = name.rpartition("/")
        if leaf.startswith("grad_") and f"{prefix}/{leaf[5:]}" in zero_biases:
            errors[name + " (abs / |grad_weight|)"] = float(np.max(np.abs(a - b)) / np.max(np.abs(ref[f"{prefix}/grad_weight"])))
        else:
            errors[name] = rel_err(a, b)
    return errors


def run_lowmem(binary, tmp, name, input_shape, layers, technique):
    if input_shape == TEXT:  # K symbols in a seeded order, each of them present
        corpus = tmp / "corpus.txt"
        corpus.write_text("".join("abcde"[i] for i in np.random.default_rng(5).integers(0, K, 400)) + "abcde")
        model, data = {"layers": layers}, {"dataset": "text", "path": str(corpus), "seq_len": 6}
    else:
        model = {"input": input_shape, "classes": K, "layers": layers}
        data = {"dataset": "synthetic", "synthetic": {"count": 64, "test_count": 16, "shape": input_shape, "classes": K}}
    technique = technique if isinstance(technique, dict) else {"type": technique}
    config = {"name": name, "study": "gradient", "seed": 3, "technique": technique, "model": model,
              "data": data,
              "train": {"batch": 8, "optimizer": {"type": "sgd", "lr": 0.1}},
              "gradient": {"reference": "none"}, "sweep": {"precision": ["f64", "f32"]}}
    path, out = tmp / f"{name}.json", tmp / f"{name}.h5"
    path.write_text(json.dumps(config))
    r = subprocess.run([binary, "run", str(path), "--out", str(out), "--threads", "1", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"lowmem failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return out


def written_in(written, resolved):
    """True if every value written is in the resolved config (which adds defaults), recursively."""
    if isinstance(written, dict):
        return isinstance(resolved, dict) and all(written_in(v, resolved.get(k)) for k, v in written.items())
    if isinstance(written, list):
        return isinstance(resolved, list) and len(written) == len(resolved) and all(
            written_in(w, r) for w, r in zip(written, resolved))
    return written == resolved


def check_case(binary, tmp, name, input_shape, layers, technique):
    """Returns the number of failures for one model; prints every measured error."""
    failures = 0
    with h5py.File(run_lowmem(binary, tmp, name, input_shape, layers, technique), "r") as f:
        runs = {g.attrs["precision"]: g for g in f["runs"].values()}
        assert sorted(runs) == ["f32", "f64"], f"runs: {sorted(runs)}"
        for precision in ("f64", "f32"):
            group, tol = runs[precision], TOLERANCE[precision]
            assert group.attrs["status"] == "complete", f"{precision}: status {group.attrs['status']}"
            config = json.loads(group.attrs["config"])
            # The resolved config fills in every default; what the test wrote must be there unchanged.
            assert written_in(layers, config["model"]["layers"]), "resolved config differs from the one written"
            assert config["technique"]["type"] == (technique["type"] if isinstance(technique, dict) else technique)
            ref = reference(build_model(config), group)
            errors = compare(group, ref, zero_grad_biases(layers))
            print(f"{name} {precision} (tolerance {tol:g}):")
            for tensor, err in errors.items():
                bad = not err <= tol
                failures += bad
                print(f"  {'FAIL' if bad else 'ok  '} {tensor:42s} {err:.3e}")
            print(f"  max {max(errors.values()):.3e}")
            if precision == "f64":  # self-check: the comparison must notice a 1e-6 relative change
                name_w = next(n for n in ref if n.endswith("grad_weight"))
                bumped = group[name_w][()].copy()
                bumped.flat[np.argmax(np.abs(bumped))] *= 1 + 1e-6
                err = rel_err(bumped, ref[name_w])
                ok = err > tol
                failures += not ok
                print(f"  {'ok  ' if ok else 'FAIL'} self-check: {name_w} bumped by 1e-6 -> error {err:.3e} > {tol:g}")
        w64, w32 = runs["f64"]["layers"], runs["f32"]["layers"]
        names = []
        w64.visit(lambda n: names.append(n) if isinstance(w64[n], h5py.Dataset) and "grad_" not in n else None)
        mismatched = [n for n in names if not np.array_equal(np.float32(w64[n][()]), w32[n][()])]
        failures += bool(mismatched)
        print(f"  {'FAIL' if mismatched else 'ok  '} f32 weights == float32(f64 weights) for {len(names)} tensors"
              + (f"; differ: {mismatched}" if mismatched else ""))
    return failures


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = str(Path(sys.argv[1]).resolve())
    torch.set_num_threads(1)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (input_shape, layers, technique) in CASES.items():
            try:
                failures += check_case(binary, Path(tmp), name, input_shape, layers, technique)
            except AssertionError as e:
                print(f"FAIL {name}: {e}")
                failures += 1
    print("PASSED" if failures == 0 else f"FAILED: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
