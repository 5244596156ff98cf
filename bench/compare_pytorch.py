#!/usr/bin/env python3
"""Training-step time of the reference CNN: lowmem against PyTorch 1.13, side by side in one run.

usage: /usr/bin/python3 bench/compare_pytorch.py --lowmem build/lowmem [--threads N] [--steps S] [--json]

For each precision (f32, bf16, f16, f64), in this order and alternating so both share the machine's noise:
  (a) PyTorch: the reference CNN (the layers of configs/reference-cnn.json if present) in that dtype
      (model.to(dtype)), SGD momentum 0.9, batch 64 of random data, torch.set_num_threads(N); median wall time
      of S steps after 3 warm-up steps. A dtype PyTorch's CPU kernels lack (float16 in 1.13) is reported as n/a.
  (b) lowmem: `lowmem run CFG --out TMP.h5 --threads N --quiet` on a "train" study of the same network on
      synthetic data for S + 3 steps; median of /runs/<id>/curves/step_seconds without the first 3.
Prints ms/step for both and lowmem/pytorch, then the two ratios the project tracks:
  lowmem f32 / pytorch f32 (target <= 3) and lowmem f16, bf16 / lowmem f32 (target <= 2).
Only ratios measured in the same run mean anything on a shared machine. Exits 0 unless something fails to run
(a missed target is reported, not an error).
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import torch
import torch.nn as nn

WARMUP = 3
BATCH = 64
PRECISIONS = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16, "f64": torch.float64}
TARGET_VS_PYTORCH = 3.0  # lowmem f32 / pytorch f32
TARGET_16BIT = 2.0       # lowmem f16 or bf16 / lowmem f32

# The reference CNN (input 1x28x28, 10 classes): configs/reference-cnn.json's layer list when that file exists,
# else this copy of it. torch_model() builds the same network from whichever list is used.
REFERENCE_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "reference-cnn.json"
LAYERS = [
    {"type": "conv", "out": 32, "kernel": 3, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"},
    {"type": "conv", "out": 32, "kernel": 3, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"},
    {"type": "maxpool", "kernel": 2},
    {"type": "conv", "out": 64, "kernel": 3, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"},
    {"type": "conv", "out": 64, "kernel": 3, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"},
    {"type": "maxpool", "kernel": 2},
    {"type": "flatten"}, {"type": "linear", "out": 10},
]
INPUT = [1, 28, 28]


def reference_layers():
    if REFERENCE_CONFIG.exists():
        model = json.loads(REFERENCE_CONFIG.read_text())["model"]
        if model.get("input", INPUT) == INPUT and "layers" in model:
            return model["layers"]
    return LAYERS


def torch_model(layers):
    """The lowmem layer list as a torch.nn.Sequential (lowmem's defaults for omitted keys)."""
    (c, h, w), features, modules = INPUT, None, []
    for s in layers:
        t = s["type"]
        if t == "conv":
            k, stride, pad = s.get("kernel", 3), s.get("stride", 1), s.get("pad", 0)
            modules.append(nn.Conv2d(c, s["out"], k, stride, pad, bias=s.get("bias", True)))
            c, h, w = s["out"], (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        elif t == "batchnorm":
            n, bn = (c, nn.BatchNorm2d) if features is None else (features, nn.BatchNorm1d)
            modules.append(bn(n, eps=s.get("eps", 1e-5), momentum=s.get("momentum", 0.1)))
        elif t == "relu":
            modules.append(nn.ReLU())
        elif t == "maxpool":
            k = s.get("kernel", 2)
            stride = s.get("stride", k)
            modules.append(nn.MaxPool2d(k, stride))
            h, w = (h - k) // stride + 1, (w - k) // stride + 1
        elif t == "flatten":
            modules.append(nn.Flatten())
            features = c * h * w
        elif t == "linear":
            modules.append(nn.Linear(features, s["out"], bias=s.get("bias", True)))
            features = s["out"]
        else:
            raise ValueError(f"layer type {t!r} is not supported by compare_pytorch.py")
    return nn.Sequential(*modules)


def pytorch_ms(layers, dtype, steps):
    """Median ms per training step, or None if PyTorch cannot train in this dtype on the CPU."""
    torch.manual_seed(0)
    model = torch_model(layers).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(BATCH, *INPUT).to(dtype)
    y = torch.randint(0, 10, (BATCH,))
    times = []
    try:
        for _ in range(WARMUP + steps):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - t0)
    except RuntimeError as e:  # e.g. "slow_conv2d_cpu" not implemented for 'Half'
        print(f"pytorch {dtype}: n/a ({str(e).splitlines()[0]})", file=sys.stderr)
        return None
    return 1000 * statistics.median(times[WARMUP:])


def lowmem_ms(binary, layers, precision, steps, threads, workdir):
    """Median ms per training step of a lowmem train run; raises RuntimeError if the run fails."""
    config = {
        "name": f"compare-{precision}", "study": "train", "precision": precision, "seed": 0,
        "model": {"input": INPUT, "classes": 10, "layers": layers},
        "data": {"dataset": "synthetic", "synthetic": {"count": BATCH * (steps + WARMUP), "test_count": BATCH}},
        "train": {"batch": BATCH, "steps": steps + WARMUP,
                  "optimizer": {"type": "sgd", "lr": 0.01, "momentum": 0.9}},
    }
    config_path, out = workdir / f"{precision}.json", workdir / f"{precision}.h5"
    config_path.write_text(json.dumps(config, indent=1))
    out.unlink(missing_ok=True)  # lowmem never overwrites: an old file would divert the results beside it
    cmd = [binary, "run", str(config_path), "--out", str(out), "--threads", str(threads), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    with h5py.File(out, "r") as f:
        (run_id, run), = f["runs"].items()
        status = run.attrs["status"]
        status = status.decode() if isinstance(status, bytes) else str(status)
        if status != "complete":
            raise RuntimeError(f"lowmem run {run_id} ({precision}) ended {status}: {run.attrs.get('message')}")
        seconds = [float(v) for v in run["curves/step_seconds"][()]]
    if len(seconds) != steps + WARMUP:
        raise RuntimeError(f"lowmem {precision}: expected {steps + WARMUP} steps, found {len(seconds)}")
    return 1000 * statistics.median(seconds[WARMUP:])


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(v, spec=".1f"):
    return "n/a" if v is None else format(v, spec)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lowmem", required=True, help="path to the lowmem binary")
    p.add_argument("--threads", type=int, default=1, help="threads for both (default 1)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default 20)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list (default: all four)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = p.parse_args()
    precisions = args.precisions.split(",")
    if unknown := [q for q in precisions if q not in PRECISIONS]:
        p.error(f"unknown precision(s) {unknown}; choose from {list(PRECISIONS)}")
    binary = str(Path(args.lowmem).resolve())
    torch.set_num_threads(args.threads)

    layers = reference_layers()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="lowmem-compare-") as tmp:
        for q in precisions:  # interleaved: pytorch q, lowmem q, next precision
            torch_time = pytorch_ms(layers, PRECISIONS[q], args.steps)
            lowmem_time = lowmem_ms(binary, layers, q, args.steps, args.threads, Path(tmp))
            rows[q] = {"pytorch_ms": torch_time, "lowmem_ms": lowmem_time,
                       "lowmem_over_pytorch": ratio(lowmem_time, torch_time)}

    f32 = rows.get("f32", {})
    tracked = {"lowmem_f32_over_pytorch_f32": {"value": f32.get("lowmem_over_pytorch"), "target": TARGET_VS_PYTORCH}}
    for q in ("f16", "bf16"):
        if q in rows:
            tracked[f"lowmem_{q}_over_lowmem_f32"] = {"value": ratio(rows[q]["lowmem_ms"], f32.get("lowmem_ms")),
                                                      "target": TARGET_16BIT}
    for t in tracked.values():
        t["met"] = None if t["value"] is None else t["value"] <= t["target"]

    if args.json:
        print(json.dumps({"threads": args.threads, "steps": args.steps, "batch": BATCH, "torch": torch.__version__,
                          "precisions": rows, "tracked": tracked}, indent=2))
        return 0
    print(f"reference CNN, batch {BATCH}, {args.threads} thread(s), median of {args.steps} steps "
          f"after {WARMUP} warm-ups (PyTorch {torch.__version__})")
    print(f"{'precision':<10}{'pytorch ms':>12}{'lowmem ms':>12}{'lowmem/pytorch':>16}")
    for q, r in rows.items():
        print(f"{q:<10}{fmt(r['pytorch_ms']):>12}{fmt(r['lowmem_ms']):>12}{fmt(r['lowmem_over_pytorch'], '.2f'):>16}")
    print("tracked ratios:")
    for name, t in tracked.items():
        verdict = "n/a" if t["met"] is None else ("ok" if t["met"] else "MISSED")
        print(f"  {name:<30}{fmt(t['value'], '.2f'):>8}  (target <= {t['target']:g}) {verdict}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError, KeyError, ValueError) as e:
        print(f"compare_pytorch.py: {e}", file=sys.stderr)
        sys.exit(1)
