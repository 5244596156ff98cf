#!/usr/bin/env python3
"""End-to-end check of lowmem's training steps (optimizer updates and learning-rate schedules) against PyTorch.

usage: test_pytorch_training.py LOWMEM_BINARY

Like llm.c's check of ten training steps against a PyTorch dump. For each case below (one optimizer + schedule):
  1. a "gradient" study run in f64 gives the initial weights (same seed => same initialisation as the train run)
     and the training data (its input/labels are the first train.batch examples, already normalised);
  2. a "train" study run in f64 of the same config trains STEPS steps and records curves/train_loss and
     curves/learning_rate;
  3. PyTorch in float64 rebuilds the network from the resolved config, loads the initial weights and, per step,
     computes the mean cross-entropy on all examples in training mode, compares it with lowmem's train_loss[step]
     (relative error <= 1e-10), backpropagates and steps torch.optim.SGD / torch.optim.Adam with the learning rate
     from this file's own implementation of the schedule (compared with lowmem's learning_rate[step] to 1e-12).
Data order is irrelevant: the synthetic set has exactly train.batch examples, so every step (one step = one epoch)
trains on the whole set, and a mean loss and batch-norm batch statistics do not depend on the order (up to
rounding), although the train study shuffles each epoch.
Also checks that the losses change across the steps, that train_loss[0] equals the gradient study's loss, and
(self-check) that a learning rate 1% off would be detected by the loss comparison at some step >= 2.
Exits non-zero on any failure.
"""
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from torch_models import build_model

LOSS_TOLERANCE = 1e-10
LR_TOLERANCE = 1e-12
STEPS = 6
BATCH = 16
K = 3  # classes
INPUT = [1, 8, 8]
LAYERS = [{"type": "conv", "out": 4, "kernel": 3, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"},
          {"type": "maxpool", "kernel": 2}, {"type": "flatten"}, {"type": "linear", "out": K}]

CASES = {
    "sgd_momentum_constant": (
        {"type": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
        {"type": "constant"}),
    "sgd_nesterov_cosine_warmup": (
        {"type": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        {"type": "cosine", "warmup_steps": 2, "final_factor": 0.1}),
    "adam_step": (
        {"type": "adam", "lr": 0.01, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 1e-3},
        {"type": "step", "step_size": 2, "gamma": 0.5}),
    "sgd_momentum_piecewise": (
        {"type": "sgd", "lr": 0.1, "momentum": 0.5},
        {"type": "piecewise", "points": [[0, 1.0], [2, 0.1]]}),
}


def schedule_lr(train, step, steps_per_epoch, total_steps):
    """The learning rate at 0-based `step`, written from the formulas lowmem documents (independent of its code)."""
    lr, s = train["optimizer"]["lr"], train.get("schedule", {})
    kind, warmup = s.get("type", "constant"), s.get("warmup_steps", 0)
    if step < warmup:
        return lr * (step + 1) / warmup
    t, span = step - warmup, max(1, total_steps - warmup)
    if kind == "constant":
        return lr
    if kind == "step":
        return lr * s.get("gamma", 0.1) ** math.floor(t / s["step_size"])
    if kind == "cosine":
        f = s.get("final_factor", 0.0)
        return lr * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * t / span)))
    if kind == "piecewise":
        epoch, pts = step / max(1, steps_per_epoch), s["points"]
        if epoch <= pts[0][0]:
            return lr * pts[0][1]
        for (e0, f0), (e1, f1) in zip(pts, pts[1:]):
            if epoch <= e1:
                return lr * (f0 + (f1 - f0) * (epoch - e0) / (e1 - e0))
        return lr * pts[-1][1]
    raise ValueError(f"unknown schedule {kind}")


def make_optimizer(params, opt):
    if opt["type"] == "sgd":
        return torch.optim.SGD(params, lr=opt["lr"], momentum=opt.get("momentum", 0.0),
                               nesterov=opt.get("nesterov", False), weight_decay=opt.get("weight_decay", 0.0))
    return torch.optim.Adam(params, lr=opt["lr"], betas=(opt.get("beta1", 0.9), opt.get("beta2", 0.999)),
                            eps=opt.get("eps", 1e-8), weight_decay=opt.get("weight_decay", 0.0))


def simulate(config, weights, x, y, lr_scale=1.0):
    """Trains a fresh torch model for STEPS steps from `weights`; returns (losses, learning rates used / lr_scale)."""
    model = build_model(config)
    params = {f"layers/{n.replace('.', '/')}": p for n, p in model.named_parameters()}
    assert set(params) == set(weights), f"parameters: torch {sorted(params)}, lowmem {sorted(weights)}"
    with torch.no_grad():
        for name, p in params.items():
            assert weights[name].shape == p.shape, f"{name}: lowmem {tuple(weights[name].shape)}, torch {tuple(p.shape)}"
            p.copy_(weights[name])
    train = config["train"]
    optimizer = make_optimizer(list(model.parameters()), train["optimizer"])
    steps_per_epoch = BATCH // min(BATCH, train["batch"])  # count == batch: one step per epoch
    total = min(steps_per_epoch * train["epochs"], train["steps"])
    losses, rates = [], []
    for step in range(STEPS):
        lr = schedule_lr(train, step, steps_per_epoch, total)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_scale
        optimizer.step()
        losses.append(float(loss))
        rates.append(lr)
    return np.array(losses), np.array(rates)


def run_lowmem(binary, tmp, name, study, optimizer, schedule):
    config = {"name": f"{name}_{study}", "study": study, "seed": 5, "precision": "f64",
              "model": {"input": INPUT, "classes": K, "layers": LAYERS},
              "data": {"dataset": "synthetic",
                       "synthetic": {"count": BATCH, "test_count": 4, "shape": INPUT, "classes": K}},
              "train": {"batch": BATCH, "epochs": STEPS + 4, "steps": STEPS, "optimizer": optimizer,
                        "schedule": schedule},
              "gradient": {"reference": "none"}}
    path, out = tmp / f"{name}_{study}.json", tmp / f"{name}_{study}.h5"
    path.write_text(json.dumps(config))
    for _ in range(30):  # the binary may be momentarily missing while it is being rebuilt
        if Path(binary).exists():
            break
        time.sleep(1)
    r = subprocess.run([binary, "run", str(path), "--out", str(out), "--threads", "1", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"lowmem {study} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return out


def single_run(path):
    f = h5py.File(path, "r")
    runs = list(f["runs"].values())
    assert len(runs) == 1, f"{path}: {len(runs)} runs"
    assert runs[0].attrs["status"] == "complete", f"status {runs[0].attrs['status']}"
    return f, runs[0]


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def check_case(binary, tmp, name, optimizer, schedule):
    """Returns (failures, max loss error, max lr error); prints every compared number."""
    failures = 0

    def report(ok, text):
        nonlocal failures
        failures += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {text}")

    print(f"{name}: optimizer {json.dumps(optimizer)}, schedule {json.dumps(schedule)}")
    f, g = single_run(run_lowmem(binary, tmp, name, "gradient", optimizer, schedule))
    with f:
        weights = {}
        g["layers"].visit(lambda n: weights.__setitem__(f"layers/{n}", torch.from_numpy(g[f"layers/{n}"][()].astype(np.float64)))
                          if isinstance(g[f"layers/{n}"], h5py.Dataset) and "grad_" not in n.rsplit("/", 1)[-1] else None)
        x = torch.from_numpy(g["input"][()].astype(np.float64))
        labels = g["labels"][()]
        grad_loss = float(np.asarray(g["loss"][()]).reshape(-1)[0])
    assert x.shape[0] == BATCH and labels.shape == (BATCH,), f"input {tuple(x.shape)}, labels {labels.shape}"
    assert np.all(labels == np.round(labels)), "labels are not integers"
    y = torch.from_numpy(labels.astype(np.int64))

    f, t = single_run(run_lowmem(binary, tmp, name, "train", optimizer, schedule))
    with f:
        config = json.loads(t.attrs["config"])
        curve_steps = t["curves/step"][()]
        lm_loss = t["curves/train_loss"][()]
        lm_lr = t["curves/learning_rate"][()]
    assert config["train"]["optimizer"] == {**config["train"]["optimizer"], **optimizer}, "resolved optimizer differs"
    assert len(lm_loss) == STEPS and list(curve_steps) == list(range(STEPS)), f"lowmem recorded steps {list(curve_steps)}"

    losses, rates = simulate(config, weights, x, y)
    loss_errs, lr_errs = [], []
    for s in range(STEPS):
        le, re = rel(lm_loss[s], losses[s]), rel(lm_lr[s], rates[s])
        loss_errs.append(le)
        lr_errs.append(re)
        report(le <= LOSS_TOLERANCE and re <= LR_TOLERANCE,
               f"step {s}: loss lowmem {lm_loss[s]:.17g} torch {losses[s]:.17g} rel {le:.2e} | "
               f"lr lowmem {lm_lr[s]:.17g} python {rates[s]:.17g} rel {re:.2e}")
    e0 = rel(grad_loss, lm_loss[0])
    report(e0 <= LOSS_TOLERANCE, f"gradient study loss {grad_loss:.17g} vs train_loss[0]: rel {e0:.2e}")
    change = float(np.max(np.abs(losses - losses[0])) / losses[0])
    report(change > 1e-3 and np.all(np.diff(losses) != 0), f"losses change across steps: max |loss - loss[0]| / loss[0] = {change:.3e}")
    wrong, _ = simulate(config, weights, x, y, lr_scale=1.01)
    detect = max(rel(lm_loss[s], wrong[s]) for s in range(2, STEPS))
    report(detect > LOSS_TOLERANCE, f"self-check: lr 1% off -> max loss error at steps >= 2 = {detect:.2e} > {LOSS_TOLERANCE:g}")
    print(f"  max loss error {max(loss_errs):.2e}, max lr error {max(lr_errs):.2e}")
    return failures, max(loss_errs), max(lr_errs)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = str(Path(sys.argv[1]).resolve())
    torch.set_num_threads(1)
    start, failures, summary = time.monotonic(), 0, []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (optimizer, schedule) in CASES.items():
            try:
                n, le, re = check_case(binary, Path(tmp), name, optimizer, schedule)
                failures += n
                summary.append(f"  {name:30s} loss {le:.2e}  lr {re:.2e}")
            except AssertionError as e:
                print(f"FAIL {name}: {e}")
                failures += 1
    print("summary (max relative error per case):")
    print("\n".join(summary))
    print(f"time {time.monotonic() - start:.1f} s")
    print("PASSED" if failures == 0 else f"FAILED: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
