#!/usr/bin/env python3
"""The trained weights a train run saves ("save_weights": true) load into the PyTorch twin of its model and give
lowmem's logits.

usage: test_pytorch_weights.py LOWMEM_BINARY

For each case: lowmem trains a few steps with save_weights; PyTorch (float64) rebuilds the network from the
resolved config (tests/torch_models.py), loads /runs/<id>/weights/* with load_state_dict (keys: the path after
"weights/" with '.' for '/'; only batch norm's num_batches_tracked may be missing, nothing may be left over) and,
in evaluation mode, computes the logits of weights_check/input, which must equal weights_check/logits (relative
error 1e-10 for an f64 run, 1e-4 for f32). A sparse run's weights come back dense with zeros where pruned. Also
checks that the weights are not the initial ones (training moved them) and that a weight put in the wrong place
would be detected.
"""
import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_models import build_model  # noqa: E402

CNN = [{"type": "conv", "out": 4, "kernel": 3, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"},
       {"type": "maxpool", "kernel": 2}, {"type": "flatten"}, {"type": "linear", "out": 3}]
RESIDUAL = [{"type": "conv", "out": 4, "kernel": 3, "pad": 1, "bias": False}, {"type": "batchnorm"}, {"type": "relu"},
            {"type": "residual", "out": 8, "stride": 2}, {"type": "residual", "out": 8, "norm": "groupnorm", "groups": 2},
            {"type": "global_avgpool"}, {"type": "linear", "out": 3}]
REVERSIBLE = [{"type": "conv", "out": 4, "kernel": 3, "pad": 1}, {"type": "inv_batchnorm"},
              {"type": "coupling", "f": [{"type": "conv", "out": 2, "kernel": 3, "pad": 1}, {"type": "relu"}],
               "g": [{"type": "conv", "out": 2, "kernel": 3, "pad": 1}, {"type": "relu"}]},
              {"type": "global_avgpool"}, {"type": "linear", "out": 3}]
SPARSE = {"type": "sparsity", "density": 0.5, "first_density": 0.5, "last_density": 0.5}

CASES = [  # name, precision, layers, technique, tolerance
    ("cnn-f64", "f64", CNN, None, 1e-10),
    ("cnn-f32", "f32", CNN, None, 1e-4),
    ("residual-f64", "f64", RESIDUAL, None, 1e-10),
    ("reversible-f64", "f64", REVERSIBLE, {"type": "reversible"}, 1e-10),
    ("sparse-f64", "f64", CNN, SPARSE, 1e-10),
]

failures = []


def check(ok, what, detail=""):
    print(("ok: " if ok else "FAILED: ") + what + ("" if ok else detail))
    if not ok:
        failures.append(what)
    return ok


def run(binary, tmp, name, precision, layers, technique):
    config = {"name": name, "seed": 5, "precision": precision, "save_weights": True,
              "model": {"input": [1, 8, 8], "classes": 3, "layers": layers},
              "data": {"dataset": "synthetic", "synthetic": {"count": 64, "test_count": 16, "shape": [1, 8, 8],
                                                              "classes": 3}},
              "train": {"batch": 8, "steps": 6, "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9}}}
    if technique:
        config["technique"] = technique
    path, out = tmp / f"{name}.json", tmp / f"{name}.h5"
    path.write_text(json.dumps(config))
    p = subprocess.run([binary, "run", str(path), "--out", str(out), "--threads", "1", "--quiet"],
                       capture_output=True, text=True)
    if not check(p.returncode == 0, f"{name}: lowmem run exits 0", f"\n    {p.stderr[-800:]}"):
        return None
    with h5py.File(out, "r") as f:
        (run_id, g), = f["runs"].items()
        weights = {}
        g["weights"].visititems(lambda n, d: weights.__setitem__(n.replace("/", "."), d[()])
                                if isinstance(d, h5py.Dataset) else None)
        return (json.loads(g.attrs["config"]), weights, g["weights_check/input"][()], g["weights_check/logits"][()],
                g["curves/train_loss"][()])


def logits_of(model, weights, x):
    with torch.no_grad():
        missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float64))
                                                     for k, v in weights.items()}, strict=False)
        model.eval()
        return model(torch.from_numpy(x)).numpy(), missing, unexpected


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def check_case(binary, tmp, name, precision, layers, technique, tolerance):
    got = run(binary, tmp, name, precision, layers, technique)
    if got is None:
        return
    config, weights, x, logits, losses = got
    model = build_model(config)
    initial = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    out, missing, unexpected = logits_of(model, weights, x)
    check(all(k.endswith("num_batches_tracked") for k in missing) and not unexpected,
          f"{name}: the saved weights are the twin's state_dict (only num_batches_tracked missing)",
          f"\n    missing {missing}, unexpected {unexpected}")
    error = rel(out, logits)
    check(error <= tolerance, f"{name}: PyTorch's eval logits with the saved weights equal lowmem's "
          f"(relative error {error:.1e} <= {tolerance:.0e})")
    if technique == SPARSE:
        zeros = np.mean(weights["0.weight"] == 0)
        check(weights["0.weight"].shape == (4, 1, 3, 3) and 0.3 < zeros < 0.7,
              f"{name}: the sparse conv weight comes back dense, {zeros:.0%} zeros (density 0.5)")
    # Self-checks: the weights moved in training, and a wrong placement would be caught.
    moved = any(k in initial and initial[k].shape == v.shape and not np.allclose(initial[k], v)
                for k, v in weights.items() if k.endswith("weight"))
    check(moved and losses[0] != losses[-1], f"{name}: training moved the weights (not the initialisation)")
    swapped = copy.deepcopy(weights)
    key = next(k for k, v in swapped.items() if k.endswith("weight") and v.ndim >= 2 and v.shape[0] > 1)
    swapped[key] = swapped[key][::-1].copy()
    wrong, _, _ = logits_of(build_model(config), swapped, x)
    check(rel(wrong, logits) > 100 * tolerance, f"{name}: a weight with its rows reversed ({key}) is detected")


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="lowmem-weights-") as tmp:
        for case in CASES:
            check_case(binary, Path(tmp), *case)
    print(f"{len(failures)} check(s) failed" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
