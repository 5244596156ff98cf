"""Reading lowmem results files from Python, with h5py and numpy only; pandas is used where it is installed.

    import sys; sys.path.insert(0, "plots")
    from lowmem_results import read_summary, read_curves, read_timeline
    runs = read_summary("results/techniques.h5")       # a pandas DataFrame, one row per run
    runs.groupby("technique_label")["peak_bytes"].min()

read_summary(path or [paths])   the /summary table: strings decoded, numbers as float64 (NaN where a run has no
                                value), swept config values as columns named by their paths
                                ("train.optimizer.lr"), a `file` column when several files are read
read_curves(path, run_id=None)  per run and step: step, train_loss, learning_rate, step_seconds, and the
                                per-epoch epoch / test_accuracy / test_loss at the step each evaluation
                                followed (curves/test_step)
read_timeline(path, run_id)     a run's memory timeline (run --timeline): one row per event, names decoded
load_runs(h5file)               the run groups in creation order, with their decoded attributes (plots use it)
result_files(path)              the files holding a results set: the file, then its pending segments

A sweep commits each run as a small file of its own in "<file>.pending/" and folds those into the file when they
outgrow it and at the sweep's end; a sweep killed or still running leaves some there. Every function here reads
the file and its pending segments as one set of runs (a run in a later segment replaces the same run earlier);
h5py alone on the file sees only the runs folded in.

Without pandas (or with pandas=False) the tables are numpy structured arrays with the same columns. The layout
is described in the README's "Results files (HDF5)".
"""
import re
import sys
from pathlib import Path

import h5py
import numpy as np

try:
    import pandas
except ImportError:  # numpy structured arrays instead
    pandas = None


# The results-file formats this reader reads: 2 has typed attributes (threads, sweep_index int64; seed a number)
# and units; 1 (older) has them as strings.
FORMATS = ("lowmem results 2", "lowmem results 1")


def text(value):
    """An HDF5 string (bytes or str, or a one-element array of them) as str."""
    if isinstance(value, np.ndarray) and value.shape == (1,):
        value = value[0]
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _table(columns, use_pandas):
    """{name: 1-D array} as a DataFrame or a structured array, columns in the given order."""
    if use_pandas is None:
        use_pandas = pandas is not None
    if use_pandas:
        if pandas is None:
            raise ImportError("pandas=True, but pandas is not installed (Debian: apt-get install python3-pandas)")
        return pandas.DataFrame(columns)
    n = len(next(iter(columns.values()))) if columns else 0
    dtype = [(name, values.dtype if values.dtype.kind == "f" else object) for name, values in columns.items()]
    out = np.empty(n, dtype=dtype)
    for name, values in columns.items():
        out[name] = values
    return out


def _decoded(array):
    """A column of /summary: float64 as it is, strings decoded to str."""
    if array.dtype.kind in "SOU":
        return np.array([text(v) for v in array], dtype=object)
    return np.asarray(array, dtype=float)


def result_files(path):
    """The files of a results set, in order: the file, then its pending segments that belong to it (numbered above
    its folded_through, with its file_id). ValueError for a file of a format this reader does not know."""
    names = []
    for f in _each_file(path):
        names.append(str(f.filename))
    return names


def _each_file(path):
    """The files of a results set opened one at a time, in order (a killed sweep may leave thousands of segments):
    the file, then each candidate segment that carries its file_id."""
    with h5py.File(path, "r") as main:
        file_id, candidates = _segment_candidates(main)
        yield main
    for p in candidates:
        try:
            segment = h5py.File(p, "r")
        except OSError as e:
            raise ValueError(f"{path}: pending segment {p} is corrupt or unreadable ({e}); move it away to read the rest")
        with segment:
            if text(segment.attrs.get("file_id", "")) == file_id:  # else another file's, left under this name
                yield segment


def _segment_candidates(main):
    """The open file `main`'s file_id and the pending segments numbered above its folded_through, in order;
    ValueError if `main` is of a format this reader does not know."""
    path = main.filename
    form = text(main.attrs.get("format", FORMATS[0]))
    if form not in FORMATS:
        raise ValueError(f"{path} is a results file of format {form!r}; this reader reads {' and '.join(FORMATS)} "
                         "(was it written by a newer lowmem?)")
    file_id = text(main.attrs["file_id"]) if "file_id" in main.attrs else ""
    pending = Path(str(path) + ".pending")
    if not file_id or not pending.is_dir():
        return file_id, []
    folded = int(main.attrs.get("folded_through", 0))
    numbered = []
    for p in pending.iterdir():
        m = re.fullmatch(r"(\d{8,18})\.h5", p.name)
        if m and int(m.group(1)) > folded:
            numbered.append((int(m.group(1)), str(p)))
    return file_id, [p for _, p in sorted(numbered)]


def _summary_columns(path):
    """One results set's /summary as {name: array}: the file's rows, then its pending segments' (a run id met
    again replaced in its row)."""
    tables = []
    for f in _each_file(path):
        if "summary" not in f:
            raise ValueError(f"{f.filename}: no /summary table; not a lowmem results file")
        table = f["summary"][()]
        tables.append({name: _decoded(table[name]) for name in table.dtype.names})
    if len(tables) == 1:
        return tables[0]
    names = []
    for t in tables:
        names += [n for n in t if n not in names]
    numeric = {n: any(t[n].dtype.kind == "f" for t in tables if n in t) for n in names}
    rows, where = [], {}  # rows as dicts; run id -> row
    for t in tables:
        count = len(next(iter(t.values()))) if t else 0
        for i in range(count):
            row = {n: t[n][i] for n in t}
            key = row.get("run_id")
            if key in where:
                rows[where[key]] = row
            else:
                where[key] = len(rows)
                rows.append(row)
    return {n: np.array([r.get(n, np.nan if numeric[n] else "") for r in rows], dtype=float if numeric[n] else object)
            for n in names}


def read_summary(paths, pandas=None):
    """The /summary table of one results file, or of several as one table with a first column `file`."""
    several = not isinstance(paths, (str, bytes)) and not hasattr(paths, "__fspath__")
    files = list(paths) if several else [paths]
    parts = [(str(path), _summary_columns(path)) for path in files]
    names = []  # in order of first appearance
    for _, columns in parts:
        names += [n for n in columns if n not in names]
    merged = {"file": []} if several else {}
    for name in names:
        merged[name] = []
    for path, columns in parts:
        rows = len(next(iter(columns.values()))) if columns else 0
        if several:
            merged["file"].append(np.array([path] * rows, dtype=object))
        for name in names:
            if name in columns:
                merged[name].append(columns[name])
            else:  # a column another file has: missing here
                numeric = any(c[name].dtype.kind == "f" for _, c in parts if name in c)
                merged[name].append(np.full(rows, np.nan) if numeric else np.array([""] * rows, dtype=object))
    columns = {name: np.concatenate(chunks) if chunks else np.array([]) for name, chunks in merged.items()}
    return _table(columns, pandas)


def read_curves(path, run_id=None, pandas=None):
    """Curves of one run (run_id) or of every run: a table with run_id, step and each curve. Curves with one value
    per epoch (test_accuracy, test_loss, epoch) are placed at the step their evaluation followed, NaN elsewhere."""
    found = {}  # run id -> (creation index, curves); a later file's record replaces an earlier one's
    for f in _each_file(path):
        for rid, group in f["runs"].items():
            if isinstance(group, h5py.Group) and (run_id is None or rid == run_id):
                found[rid] = (int(group.attrs.get("index", sys.maxsize)),
                              {k: np.asarray(v[()], dtype=float).ravel() for k, v in group["curves"].items()}
                              if "curves" in group else {})
    if run_id is not None and run_id not in found:
        raise KeyError(f"{path}: no run {run_id!r}")
    rows = {"run_id": [], "step": []}
    curves = {}
    for rid in sorted(found, key=lambda r: (found[r][0], r)):
        data = found[rid][1]
        steps = data.get("step", np.arange(len(data.get("train_loss", []))))
        n = len(steps)
        rows["run_id"].append(np.array([rid] * n, dtype=object))
        rows["step"].append(np.asarray(steps, dtype=float))
        # Per-epoch values sit at curves/test_step (the last step before each evaluation); files written
        # before it existed: at the ends of equal epochs (wrong for a cut-short or diverged last epoch).
        per_epoch = [k for k, v in data.items() if k not in ("step", "test_step") and len(v) != n]
        at = data.get("test_step")
        for name, values in data.items():
            if name in ("step", "test_step"):
                continue
            column = np.full(n, np.nan)
            if name not in per_epoch:
                column[:] = values
            elif n and len(values):
                if at is not None and len(at) == len(values):
                    where = np.searchsorted(steps, at)
                    keep = (where < n) & (np.asarray(steps)[np.minimum(where, n - 1)] == at)
                    column[where[keep]] = values[keep]
                else:
                    ends = _epoch_ends(n, len(values))
                    column[ends] = values[:len(ends)]
            curves.setdefault(name, []).append((len(rows["step"]) - 1, column))
    columns = {"run_id": np.concatenate(rows["run_id"]) if rows["run_id"] else np.array([], dtype=object),
               "step": np.concatenate(rows["step"]) if rows["step"] else np.array([])}
    sizes = [len(s) for s in rows["step"]]
    for name, parts in curves.items():
        filled = [np.full(size, np.nan) for size in sizes]
        for k, column in parts:
            filled[k] = column
        columns[name] = np.concatenate(filled)
    return _table(columns, pandas)


def _epoch_ends(steps, epochs):
    """Indices of the last step of each of `epochs` equal epochs over `steps` steps (the last at the end)."""
    return np.array([min(steps, round(steps * (e + 1) / epochs)) - 1 for e in range(epochs)], dtype=int)


def read_timeline(path, run_id, pandas=None):
    """The memory timeline a run recorded (run --timeline): one row per event, with kind, category, from
    (the category a move came from), phase, owner as text, and buffer and bytes as numbers."""
    holder = None  # the last file holding the run: its record replaces earlier ones
    for f in _each_file(path):
        if run_id in f["runs"]:
            holder = f.filename
    with h5py.File(holder or path, "r") as f:
        run = f["runs"].get(run_id) if holder else None
        if run is None or "memory/timeline" not in run:
            raise KeyError(f"{path}: run {run_id!r} has no memory timeline (run it with lowmem run --timeline)")
        g = run["memory/timeline"]
        events = np.asarray(g["events"][()], dtype=float)
        names = [text(c) for c in g["columns"][()]]
        tables = {name: [text(v) for v in g[name][()]] for name in ("kinds", "phases", "owners") if name in g}
        tables["categories"] = [text(v) for v in run["memory/categories"][()]]
    lookup = {"kind": "kinds", "category": "categories", "from": "categories", "phase": "phases", "owner": "owners"}
    columns = {}
    for k, name in enumerate(names):
        values = events[:, k] if events.size else np.array([])
        source = lookup.get(name)
        if source in tables:
            table = tables[source]
            columns[name] = np.array([table[int(v)] if 0 <= v < len(table) else "" for v in values], dtype=object)
        else:
            columns[name] = values
    return _table(columns, pandas)


def load_runs(f):
    """Run groups of an open h5py File and of its pending segments, in creation order (attribute "index"), each
    as a dict of its decoded attributes plus the group. The segments stay open while their groups are used (a
    sweep that ended has none: its end folds them into the file)."""
    file_id, candidates = _segment_candidates(f)
    segments = []
    for p in candidates:
        try:
            segments.append(h5py.File(p, "r"))
        except OSError as e:
            raise ValueError(f"{f.filename}: pending segment {p} is corrupt or unreadable ({e}); move it away to read "
                             "the rest")
    return _runs([f] + [g for g in segments if text(g.attrs.get("file_id", "")) == file_id])


def _runs(parts):
    """The run groups of a results set's open files, in order, a run in a later file replacing the same run."""
    groups = {}
    for f in parts:
        for run_id, group in f["runs"].items():
            if isinstance(group, h5py.Group):
                groups[run_id] = group
    runs = []
    for run_id, group in groups.items():
        attrs = dict(group.attrs)
        runs.append({"id": run_id, "group": group, "attrs": attrs,
                     "study": text(attrs.get("study", "")), "precision": text(attrs.get("precision", ""))})
    runs.sort(key=lambda r: (int(r["attrs"].get("index", sys.maxsize)), r["id"]))
    return runs
