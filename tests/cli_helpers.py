"""Helpers shared by the script tests of the lowmem command line (test_cli.py, test_harness.py): running the
binary, checks that print one line each, and reading results files."""
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plots"))
import lowmem_results  # noqa: E402  reads a file with its pending segments, as lowmem does

BINARY = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "build" / "lowmem").resolve()
RUN_OPTS = ["--threads", "1", "--quiet"]
CRASH_TEXT = ["Traceback", "terminate called", "Segmentation", "Aborted", "core dumped", "what():",
              "AddressSanitizer", "runtime error:"]

TINY = {
    "name": "tiny",
    "seed": 1,
    "precision": "f32",
    "model": {"input": [1, 8, 8], "classes": 3, "layers": [
        {"type": "conv", "out": 4, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"},
        {"type": "maxpool", "kernel": 2}, {"type": "flatten"}, {"type": "linear", "out": 3}]},
    "data": {"dataset": "synthetic", "synthetic": {"count": 64, "test_count": 16, "shape": [1, 8, 8], "classes": 3}},
    "train": {"batch": 8, "steps": 3, "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9}},
}

PROVENANCE = ["git_commit", "git_dirty", "build_type", "compiler", "eigen_version", "boost_version", "hdf5_version",
              "cpu_model", "isa", "gemm_isa",
              "host", "threads", "seed", "start_time", "end_time"]
SUMMARY_COLUMNS = ["run_id", "study", "precision", "status", "wall_seconds", "peak_bytes", "activation_peak_bytes",
                   "final_train_loss", "test_accuracy"]
# plan --json category -> run attribute
MEMORY = {"weights": "weights_bytes", "gradients": "gradients_bytes", "optimizer_state": "optimizer_state_bytes",
          "saved_activations": "activation_peak_bytes", "workspace": "workspace_peak_bytes"}

failures = []


def lowmem(*args, cwd=None, prefix=(), timeout=300, preexec_fn=None):
    cmd = [*prefix, str(BINARY), *map(str, args)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout, cwd=cwd,
                           preexec_fn=preexec_fn)
    except subprocess.TimeoutExpired as e:
        p = subprocess.CompletedProcess(cmd, -999, e.stdout or "", (e.stderr or "") + "\n<timeout>")
    p.cmdline = " ".join(cmd)
    return p


def describe(p):
    return (f"\n    command: {p.cmdline}\n    exit code: {p.returncode}"
            f"\n    stdout: {p.stdout.strip()[:1500]!r}\n    stderr: {p.stderr.strip()[:1500]!r}")


def check(condition, what, detail=""):
    if condition:
        print(f"ok: {what}", flush=True)
    else:
        print(f"FAILED: {what}{detail}", flush=True)
        failures.append(what)
    return condition


def skip(what, why):
    print(f"skipped: {what} ({why})", flush=True)


def crash_free(p):
    text = p.stdout + p.stderr
    return p.returncode in (1, 2) and not any(t in text for t in CRASH_TEXT)


def missing_words(text, words):
    return [w for w in words if w not in text]


def expect_error(what, p, code, words):
    """Exit code `code` (1 or 2), a 'lowmem: ' line on stderr holding every word, no crash text."""
    missing = missing_words(p.stderr, words)
    ok = (p.returncode == code and crash_free(p) and not missing and p.stderr.startswith("lowmem: "))
    detail = describe(p) + (f"\n    missing in stderr: {missing}" if missing else "") + f"\n    expected exit {code}"
    return check(ok, what, detail)


def run_messages(h5):
    """(status, message) of each run of a results file, in run order."""
    with h5py.File(h5, "r") as f:
        runs = sorted(f["runs"].values(), key=lambda g: int(g.attrs["index"]))
        return [(str(g.attrs["status"]), str(g.attrs["message"])) for g in runs]


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def committed_runs(h5):
    """Runs committed: in the file or in its pending segments (a sweep still running, or killed)."""
    ids = set()
    try:
        for name in lowmem_results.result_files(h5):
            with h5py.File(name, "r") as f:
                ids.update(f["runs"])
    except (OSError, ValueError, KeyError):
        return 0
    return len(ids)


def runs_of(h5):
    """run_id -> attributes (dict) and curves, in run order."""
    with h5py.File(h5, "r") as f:
        out = {}
        for g in sorted(f["runs"].values(), key=lambda g: int(g.attrs["index"])):
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
            curves = {k: np.array(v) for k, v in g["curves"].items()} if "curves" in g else {}
            out[g.name.split("/")[-1]] = (attrs, curves)
        return out


def plan_json(cfg, *extra):
    p = lowmem("plan", cfg, "--json", *extra)
    try:
        return p, json.loads(p.stdout)
    except ValueError:
        return p, None


def run_sections(sections):
    """Runs each section (a function of the scratch directory) and prints the verdict; returns the exit code."""
    start = time.monotonic()
    if not BINARY.exists():
        print(f"FAILED: lowmem binary {BINARY} not found")
        return 1
    with tempfile.TemporaryDirectory(prefix="lowmem-test-") as tmp:
        for section in sections:
            try:
                section(Path(tmp))
            except Exception as e:  # a broken section must not hide the others
                check(False, f"{section.__name__} raised {type(e).__name__}: {e}")
        # restore permissions so the temporary directory can be removed
        for d in Path(tmp).rglob("*"):
            if d.is_dir():
                d.chmod(0o755)
    print(f"{len(failures)} check(s) failed in {time.monotonic() - start:.1f} s" if failures
          else f"all checks passed in {time.monotonic() - start:.1f} s")
    for f in failures:
        print(f"  failed: {f}")
    return 1 if failures else 0
