#!/usr/bin/env python3
"""Training-step time of the reference CNN: lowmem against PyTorch 1.13, side by side in one run.

usage: /usr/bin/python3 bench/compare_pytorch.py --lowmem build/lowmem [--threads N] [--steps S] [--techniques] [--sequence] [--epoch] [--json]

For each precision (f32, bf16, f16, f64), in this order and alternating so both share the machine's noise:
  (a) PyTorch: the reference CNN (the layers of configs/reference-cnn.json if present) in that dtype
      (model.to(dtype)), SGD momentum 0.9, batch 64 of random data, torch.set_num_threads(N); median wall time
      of S steps after 3 warm-up steps. A dtype PyTorch's CPU kernels lack (float16 in 1.13) is reported as n/a.
  (b) lowmem: `lowmem run CFG --out TMP.h5 --threads N --quiet` on a "train" study of the same network on
      synthetic data for S + 3 steps; median of /runs/<id>/curves/step_seconds without the first 3.
With --techniques, lowmem f32 is also timed under checkpoint (uniform), approximate activations (ActNN, 4 bits),
mixed precision (f16) and microbatching (64 microbatches of one image), each against store_all in the same run.
With --epoch, also one epoch of the reference CNN in f32 on Fashion-MNIST (Debian's dataset-fashion-mnist, 60,000
training images at batch 64 in a seeded random order, then the 10,000 test images), wall time of the whole run:
lowmem `run` of configs/reference-cnn.json (f32 only, its sweep removed) against PyTorch loading the same files
(gzip + numpy, pixels / 255), SGD momentum 0.9 with the config's learning rate and weight decay, evaluating in
eval mode; both report their test accuracy as a check that they trained (target: lowmem <= 0.8x PyTorch).
With --sequence, also the character models of issue "Sequence models", in f32 on Debian's fortunes (windows of
SEQ_LEN characters, batch SEQ_BATCH, Adam): the Transformer of configs/text-transformer.json (4 pre-norm blocks of
width 128, 4 heads, MLP 4x; PyTorch: nn.TransformerEncoder with norm_first, GELU, no dropout, a causal mask) and
an LSTM language model (arch "lstm": embedding 256, 2 stacked layers of 256; PyTorch: nn.LSTM), each lowmem
against PyTorch on random token ids of the same vocabulary (target: lowmem <= 1.0x PyTorch).
Prints ms/step for both and lowmem/pytorch, then the ratios the project tracks: lowmem f32 / pytorch f32
(target <= 0.8), lowmem bf16 / pytorch bf16 (<= 1), lowmem f16 / lowmem f32 (<= 1), lowmem f64 / pytorch f64
(<= 0.1), and with --techniques checkpoint <= 1.35x and ActNN 4 bits <= 1.2x store_all.
Only ratios measured in the same run mean anything on a shared machine. Exits 0 unless something fails to run
(a missed target is reported, not an error).
"""
import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn as nn

WARMUP = 3
BATCH = 64
PRECISIONS = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16, "f64": torch.float64}
# Targets (issue "Kernels at the machine's speed"): ratios measured side by side in one run.
TARGET_VS_PYTORCH = 0.8  # lowmem f32 / pytorch f32
TARGET_BF16 = 1.0        # lowmem bf16 / pytorch bf16
TARGET_F16 = 1.0         # lowmem f16 / lowmem f32
TARGET_F64 = 0.1         # lowmem f64 / pytorch f64
# --techniques: lowmem f32 under each technique against store_all (target on the ratio, or None: reported only).
TECHNIQUES = {
    "checkpoint_uniform": ({"type": "checkpoint", "schedule": "uniform"}, 1.35),
    "approx_actnn_4bit": ({"type": "approx_activations", "bits": 4, "method": "actnn"}, 1.2),
    "mixed_precision_f16": ({"type": "mixed_precision", "compute": "f16"}, None),
    "microbatch_64": ({"type": "microbatch", "count": 64}, None),
}

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


def lowmem_ms(binary, layers, precision, steps, threads, workdir, technique=None, tag=None):
    """Median ms per training step of a lowmem train run of the reference CNN; raises RuntimeError if it fails."""
    tag = tag or precision
    config = {
        "name": f"compare-{tag}", "study": "train", "precision": precision, "seed": 0,
        "model": {"input": INPUT, "classes": 10, "layers": layers},
        "data": {"dataset": "synthetic", "synthetic": {"count": BATCH * (steps + WARMUP), "test_count": BATCH}},
        "train": {"batch": BATCH, "steps": steps + WARMUP,
                  "optimizer": {"type": "sgd", "lr": 0.01, "momentum": 0.9}},
    }
    if technique is not None:
        config["technique"] = technique
    return lowmem_config_ms(binary, config, steps, threads, workdir)


# --sequence: the models (lowmem "model" objects) and their PyTorch counterparts, timed in f32.
SEQ_LEN, SEQ_BATCH, TARGET_SEQUENCE = 128, 32, 1.0
SEQUENCE_MODELS = {
    "transformer": {"arch": "transformer", "depth": 4, "width": 128, "heads": 4, "mlp": 4},
    "lstm": {"arch": "lstm", "depth": 2, "width": 256},
}


class TorchTransformer(nn.Module):
    """GPT-style: embedding + learned positions, pre-norm blocks with a causal mask, final layer norm, head."""

    def __init__(self, vocab, depth, width, heads, mlp):
        super().__init__()
        self.embed, self.positions = nn.Embedding(vocab, width), nn.Parameter(torch.zeros(SEQ_LEN, width))
        block = nn.TransformerEncoderLayer(width, heads, mlp * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, depth, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)
        self.register_buffer("mask", torch.triu(torch.full((SEQ_LEN, SEQ_LEN), float("-inf")), 1))

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.embed(x) + self.positions, mask=self.mask)))


class TorchLstm(nn.Module):
    def __init__(self, vocab, depth, width):
        super().__init__()
        self.embed, self.lstm = nn.Embedding(vocab, width), nn.LSTM(width, width, depth, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, x):
        return self.head(self.lstm(self.embed(x))[0])


def sequence_config(name, model, steps):
    return {"name": f"compare-{name}", "study": "train", "precision": "f32", "seed": 0, "model": model,
            "data": {"dataset": "text", "seq_len": SEQ_LEN},
            "train": {"batch": SEQ_BATCH, "steps": steps + WARMUP, "optimizer": {"type": "adam", "lr": 0.001}}}


def sequence_vocab(binary, config, workdir):
    """The vocabulary lowmem reads from the corpus (`lowmem plan --json`: the resolved model.classes)."""
    path = workdir / "vocab.json"
    path.write_text(json.dumps(config))
    done = subprocess.run([binary, "plan", str(path), "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"lowmem plan {path} exited {done.returncode}: {done.stderr.strip()}")
    return json.loads(done.stdout)[0]["config"]["model"]["classes"]


def pytorch_sequence_ms(name, model, vocab, steps):
    torch.manual_seed(0)
    keys = {k: v for k, v in model.items() if k != "arch"}
    net = TorchTransformer(vocab, **keys) if name == "transformer" else TorchLstm(vocab, **keys)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.001)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randint(0, vocab, (SEQ_BATCH, SEQ_LEN)), torch.randint(0, vocab, (SEQ_BATCH, SEQ_LEN))
    times = []
    for _ in range(WARMUP + steps):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x).reshape(-1, vocab), y.reshape(-1)).backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[WARMUP:])


def lowmem_config_ms(binary, config, steps, threads, workdir):
    """Median ms per training step of a lowmem train run of `config` (steps + WARMUP steps), the first WARMUP
    left out; raises RuntimeError if the run fails."""
    tag = config["name"]
    config_path, out = workdir / f"{tag}.json", workdir / f"{tag}.h5"
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
            raise RuntimeError(f"lowmem run {run_id} ({tag}) ended {status}: {run.attrs.get('message')}")
        seconds = [float(v) for v in run["curves/step_seconds"][()]]
    if len(seconds) != steps + WARMUP:
        raise RuntimeError(f"lowmem {tag}: expected {steps + WARMUP} steps, found {len(seconds)}")
    return 1000 * statistics.median(seconds[WARMUP:])


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
TARGET_EPOCH = 0.8  # lowmem / pytorch, one epoch of the reference CNN in f32


def fashion_mnist(split):
    """(images float32 N x 1 x 28 x 28 in [0, 1], labels int64) of 'train' or 't10k', from the idx files."""
    with gzip.open(FASHION_MNIST / f"{split}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(FASHION_MNIST / f"{split}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return torch.from_numpy(images.astype(np.float32) / 255), torch.from_numpy(labels.astype(np.int64))


def pytorch_epoch(layers, optimizer_spec):
    """(seconds, test accuracy) of one f32 epoch, data loading and evaluation included."""
    t0 = time.perf_counter()
    (x, y), (tx, ty) = fashion_mnist("train"), fashion_mnist("t10k")
    torch.manual_seed(0)
    model = torch_model(layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=optimizer_spec.get("lr", 0.01),
                                momentum=optimizer_spec.get("momentum", 0.9),
                                weight_decay=optimizer_spec.get("weight_decay", 0.0))
    loss_fn = nn.CrossEntropyLoss()
    order = torch.randperm(len(x))
    model.train()
    for first in range(0, len(x) - BATCH + 1, BATCH):
        batch = order[first:first + BATCH]
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x[batch]), y[batch]).backward()
        optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for first in range(0, len(tx), BATCH):
            correct += int((model(tx[first:first + BATCH]).argmax(1) == ty[first:first + BATCH]).sum())
    return time.perf_counter() - t0, correct / len(tx)


def lowmem_epoch(binary, threads, workdir):
    """(seconds, test accuracy) of `lowmem run` on configs/reference-cnn.json in f32 (wall time of the process)."""
    config = json.loads(REFERENCE_CONFIG.read_text())
    config.pop("sweep", None)
    config["precision"], config["name"] = "f32", "compare-epoch"
    config_path, out = workdir / "epoch.json", workdir / "epoch.h5"
    config_path.write_text(json.dumps(config, indent=1))
    out.unlink(missing_ok=True)
    cmd = [binary, "run", str(config_path), "--out", str(out), "--threads", str(threads), "--quiet"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    with h5py.File(out, "r") as f:
        (run_id, run), = f["runs"].items()
        return seconds, float(run.attrs["test_accuracy"])


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
    p.add_argument("--techniques", action="store_true",
                   help="also time lowmem f32 under each technique of TECHNIQUES against store_all, side by side")
    p.add_argument("--epoch", action="store_true",
                   help="also time one f32 epoch of the reference CNN on Fashion-MNIST, lowmem against PyTorch")
    p.add_argument("--sequence", action="store_true",
                   help="also time the Transformer and LSTM character models in f32, lowmem against PyTorch")
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
        techniques = {}
        if args.techniques:
            base = lowmem_ms(binary, layers, "f32", args.steps, args.threads, Path(tmp), {"type": "store_all"},
                             "store_all")
            for name, (technique, target) in TECHNIQUES.items():
                t = lowmem_ms(binary, layers, "f32", args.steps, args.threads, Path(tmp), technique, name)
                techniques[name] = {"lowmem_ms": t, "store_all_ms": base, "over_store_all": ratio(t, base),
                                    "target": target}
        sequence = {}
        if args.sequence:
            for name, model in SEQUENCE_MODELS.items():
                config = sequence_config(name, model, args.steps)
                vocab = sequence_vocab(binary, config, Path(tmp))
                torch_time = pytorch_sequence_ms(name, model, vocab, args.steps)
                lowmem_time = lowmem_config_ms(binary, config, args.steps, args.threads, Path(tmp))
                sequence[name] = {"pytorch_ms": torch_time, "lowmem_ms": lowmem_time, "vocab": vocab,
                                  "lowmem_over_pytorch": ratio(lowmem_time, torch_time)}
        epoch = None
        if args.epoch:
            torch_s, torch_acc = pytorch_epoch(layers, json.loads(REFERENCE_CONFIG.read_text())["train"]["optimizer"])
            lowmem_s, lowmem_acc = lowmem_epoch(binary, args.threads, Path(tmp))
            epoch = {"pytorch_s": torch_s, "pytorch_test_accuracy": torch_acc, "lowmem_s": lowmem_s,
                     "lowmem_test_accuracy": lowmem_acc, "lowmem_over_pytorch": ratio(lowmem_s, torch_s)}

    f32 = rows.get("f32", {})
    tracked = {"lowmem_f32_over_pytorch_f32": {"value": f32.get("lowmem_over_pytorch"), "target": TARGET_VS_PYTORCH}}
    if "bf16" in rows:
        tracked["lowmem_bf16_over_pytorch_bf16"] = {"value": rows["bf16"]["lowmem_over_pytorch"],
                                                    "target": TARGET_BF16}
    if "f16" in rows:
        tracked["lowmem_f16_over_lowmem_f32"] = {"value": ratio(rows["f16"]["lowmem_ms"], f32.get("lowmem_ms")),
                                                 "target": TARGET_F16}
    if "f64" in rows:
        tracked["lowmem_f64_over_pytorch_f64"] = {"value": rows["f64"]["lowmem_over_pytorch"], "target": TARGET_F64}
    for name, t in techniques.items():
        if t["target"] is not None:
            tracked[f"{name}_over_store_all"] = {"value": t["over_store_all"], "target": t["target"]}
    for name, r in sequence.items():
        tracked[f"{name}_lowmem_f32_over_pytorch_f32"] = {"value": r["lowmem_over_pytorch"], "target": TARGET_SEQUENCE}
    if epoch is not None:
        tracked["epoch_lowmem_over_pytorch_f32"] = {"value": epoch["lowmem_over_pytorch"], "target": TARGET_EPOCH}
    for t in tracked.values():
        t["met"] = None if t["value"] is None else t["value"] <= t["target"]

    if args.json:
        print(json.dumps({"threads": args.threads, "steps": args.steps, "batch": BATCH, "torch": torch.__version__,
                          "precisions": rows, "techniques": techniques, "sequence": sequence, "epoch": epoch, "tracked": tracked},
                         indent=2))
        return 0
    print(f"reference CNN, batch {BATCH}, {args.threads} thread(s), median of {args.steps} steps "
          f"after {WARMUP} warm-ups (PyTorch {torch.__version__})")
    print(f"{'precision':<10}{'pytorch ms':>12}{'lowmem ms':>12}{'lowmem/pytorch':>16}")
    for q, r in rows.items():
        print(f"{q:<10}{fmt(r['pytorch_ms']):>12}{fmt(r['lowmem_ms']):>12}{fmt(r['lowmem_over_pytorch'], '.2f'):>16}")
    if techniques:
        print(f"{'technique (lowmem f32)':<28}{'ms':>10}{'store_all ms':>14}{'ratio':>8}")
        for name, t in techniques.items():
            print(f"{name:<28}{fmt(t['lowmem_ms']):>10}{fmt(t['store_all_ms']):>14}{fmt(t['over_store_all'], '.2f'):>8}")
    if sequence:
        print(f"character models in f32, batch {SEQ_BATCH} x {SEQ_LEN} positions:")
        for name, r in sequence.items():
            print(f"{name:<10}{fmt(r['pytorch_ms']):>12}{fmt(r['lowmem_ms']):>12}"
                  f"{fmt(r['lowmem_over_pytorch'], '.2f'):>16}")
    if epoch is not None:
        print(f"one f32 epoch of Fashion-MNIST (60,000 images, then the 10,000 test images): pytorch "
              f"{epoch['pytorch_s']:.1f} s (test accuracy {epoch['pytorch_test_accuracy']:.4f}), lowmem "
              f"{epoch['lowmem_s']:.1f} s ({epoch['lowmem_test_accuracy']:.4f})")
    print("tracked ratios:")
    for name, t in tracked.items():
        verdict = "n/a" if t["met"] is None else ("ok" if t["met"] else "MISSED")
        print(f"  {name:<36}{fmt(t['value'], '.2f'):>8}  (target <= {t['target']:g}) {verdict}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError, KeyError, ValueError) as e:
        print(f"compare_pytorch.py: {e}", file=sys.stderr)
        sys.exit(1)
