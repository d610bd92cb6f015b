"""Side-by-side comparison: several models trained and tested one after another by
:func:`recbole_mql.quick_start.run_recbole_mql` (same seed, same split, same evaluator), reported as
one table (CSV + Markdown) and one grouped bar chart.

A comparison lives in ``<results_dir>/<dataset>/<timestamp>/``::

    comparison.json         dataset, every model asked for and the settings they ran with (checked on resume)
    <Model>.result.json     the model's row, written atomically as soon as the model finishes
    <Model>.config.yaml     the resolved config the model ran with
    <Model>.log             the model's RecBole log (every record of its run, RecBole's format)
    checkpoints/            best checkpoints (for ``--recommend``), unless checkpoint_dir is given
    results.csv, results.md, metrics.png; reference.csv with ``with_reference``

A model that raises is a ``failed`` row carrying its error; one whose ``selected_features`` the
dataset lacks is ``skipped``; the others still run. Re-running into the same directory
(``resume_dir``) skips every model whose row says ``ok``.
"""

import contextlib
import csv
import gc
import io
import json
import logging
import math
import os
import time
import traceback

import numpy as np
import torch
import yaml
from recbole.utils import init_logger

from dataset_prep.io import atomic_write

from recbole_mql.config import PROPERTIES_DIR, Config, ConfigSources, checked_protocol, load_yaml_file
from recbole_mql.data.preparation import ItemFeaturesMissing, check_item_features
from recbole_mql.protocol import ProtocolError, protocol_config, yaml_names
from recbole_mql.significance import (adjust_pvalues, aligned_ranks, interval_columns, ranks_file, seed_spread,
                                      significance_markdown, significance_rows)
from recbole_mql.quick_start import TrainingInterrupted, run_recbole_mql
from recbole_mql.utils import UnknownModelError, get_model

REFERENCE_DIR = os.path.join(PROPERTIES_DIR, "reference")
# (RecBole's result key, column name) of the metrics in the table, the plot and the reference.
METRICS = [("hit@1", "HR@1"), ("hit@5", "HR@5"), ("hit@10", "HR@10"), ("ndcg@5", "NDCG@5"), ("ndcg@10", "NDCG@10")]
METRIC_NAMES = [name for _, name in METRICS]
COLUMNS = (["model", "status"] + METRIC_NAMES
           + ["best epoch", "epochs", "ended by", "train seconds", "eval seconds", "parameter count", "scoring", "error"])
# bootstrap interval over users of each metric (CSV only; the Markdown shows +- the half width)
CI_COLUMNS = [f"{name} {end}" for name in METRIC_NAMES for end in ("low", "high")]
REFERENCE_COLUMNS = ["model", "source"] + METRIC_NAMES
MANIFEST = "comparison.json"
LOG_FORMAT = "%(asctime)-15s %(levelname)s  %(message)s"  # RecBole's log-file format


class CompareError(ValueError):
    """A comparison that cannot start or resume (bad protocol, reference or results folder)."""


# ------------------------------------------------------------------------------ results folder
def open_run_dir(results_dir, dataset, resume_dir=None):
    """``resume_dir`` if given (created if new), else a new ``<results_dir>/<dataset>/<timestamp>``."""
    if resume_dir:
        os.makedirs(resume_dir, exist_ok=True)
        return resume_dir
    base = os.path.join(results_dir, dataset, time.strftime("%Y-%m-%d_%H-%M-%S"))
    path, n = base, 1
    while True:
        try:
            os.makedirs(path)  # no check first: two comparisons started in one second get a folder each
            return path
        except FileExistsError:
            path, n = f"{base}-{n}", n + 1


def read_json(path, what, fix):
    """A JSON file of the results folder; a damaged one is a :class:`CompareError` naming it and ``fix``."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CompareError(f"{path} ({what}) is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}): "
                           f"{fix}") from None


def _differences(label, a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return [f"{label}.{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys]
    return [f"{label} {a!r} -> {b!r}"] if a != b else []


def checked_manifest(run_dir, manifest):
    """Refuse to resume a folder made for another dataset or other settings: its rows would not compare.
    Compared: the sources' contents (the config files' keys, not their names) and each model's resolved
    settings (so an edited config file or property file is caught too).

    Returns the manifest to write: ``models`` lists every model the folder was asked for, earlier
    commands' first (two comparisons with disjoint lists may share one folder), ``resolved`` every
    model's settings."""
    path = os.path.join(run_dir, MANIFEST)
    if not os.path.isfile(path):
        return manifest
    old = read_json(path, "the comparison's settings", "restore it, or start a new comparison (no --resume_dir).")
    changed = []
    if old.get("dataset") != manifest["dataset"]:
        changed.append(f"dataset {old.get('dataset')} -> {manifest['dataset']}")
    before, now = dict(old.get("settings") or {}), manifest["settings"]
    if all(isinstance(f, str) for f in before.get("config_files") or []) and before.get("config_files"):
        before["config_files"] = now["config_files"] if before["config_files"] == manifest["config_file_names"] \
            else before["config_files"]  # a folder of an earlier version recorded the files' names only
    for section in sorted(set(before) | set(now)):
        changed += _differences(section, before.get(section) or {}, now.get(section) or {})
    old_resolved = old.get("resolved") or {}
    for model in sorted(set(old_resolved) & set(manifest["resolved"])):
        changed += _differences(model, old_resolved[model], manifest["resolved"][model])
    if changed:
        shown = "; ".join(changed[:8]) + (f"; and {len(changed) - 8} more" if len(changed) > 8 else "")
        raise CompareError(
            f"{run_dir} holds a comparison run with other settings ({shown}): resume it with the "
            f"same --dataset, --protocol, --config_files (same contents) and --key=value flags, or start a new one "
            f"(no --resume_dir).")
    return dict(manifest, models=list(dict.fromkeys((old.get("models") or []) + manifest["models"])),
                resolved={**old_resolved, **manifest["resolved"]})


def write_text(path, text):
    """Write ``text`` to ``path`` atomically: a reader (or a resumed run) sees the old file or the new one."""
    with atomic_write(path) as f:
        f.write(text)


def write_json(path, content):
    write_text(path, json.dumps(content, indent=2, default=str) + "\n")


def result_file(run_dir, model):
    return os.path.join(run_dir, f"{model}.result.json")


def finished_row(run_dir, model):
    """The saved row of ``model`` if it finished (status ``ok``), else ``None``: failed models run again."""
    path = result_file(run_dir, model)
    if not os.path.isfile(path):
        return None
    row = read_json(path, f"{model}'s result", f"delete it to run {model} again, or restore it.")
    return row if isinstance(row, dict) and row.get("status") == "ok" else None


# ------------------------------------------------------------------------------------ one model
@contextlib.contextmanager
def model_log(config, path):
    """Log one model's run to RecBole's log file and console (RecBole's ``init_logger``) and to ``path``.

    RecBole configures the root logger with ``logging.basicConfig``, which does nothing once handlers
    exist: without removing this run's handlers afterwards, every later model would log into the
    first one's file. Handlers that were there before (e.g. pytest's) are left alone.
    """
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    init_logger(config)
    capture = logging.FileHandler(path, encoding="utf-8")
    capture.setFormatter(logging.Formatter(LOG_FORMAT, "%a %d %b %Y %H:%M:%S"))
    level_name = logging.getLevelName(str(config["state"] or "INFO").upper())
    capture.setLevel(level_name if isinstance(level_name, int) else logging.INFO)  # as RecBole's own file
    root.addHandler(capture)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


def plain(value):
    """``value`` as YAML/JSON-safe data: numpy scalars to numbers, enums, devices and classes to text."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_config(config, path):
    """The resolved config, every key, as YAML (derived keys such as MODEL_TYPE and device as text)."""
    header = f"# Resolved config of {config['model']} on {config['dataset']} (recbole_mql --compare).\n"
    write_text(path, header + yaml.safe_dump(plain(config.final_config_dict), sort_keys=True, allow_unicode=True))


def result_row(model, result):
    """One ``ok`` table row (plus detail keys kept only in the JSON) from run_recbole_mql's result."""
    test = result["test_result"]
    row = {"model": model, "status": "ok"}
    row.update({name: float(test[key]) if key in test else None for key, name in METRICS})
    row.update({
        "best epoch": result["best_epoch"], "epochs": result.get("epochs_trained"),
        "ended by": result.get("ended_by") or "",
        "train seconds": round(result["train_seconds"], 1),
        "eval seconds": round(result["eval_seconds"], 1), "parameter count": int(result["params"]), "error": "",
        "test_result": plain(test), "best_valid_result": plain(result["best_valid_result"]),
        "saved_model_file": result["saved_model_file"], "recbole_log_file": result["log_file"],
        "scoring": result.get("collision_scoring") or "", "ranks_file": result.get("ranks_file"),
    })
    return row


def unfinished_row(model, status, error):
    """A ``failed`` or ``skipped`` row: no metrics, the error on one line."""
    row = {column: None for column in COLUMNS}
    row.update({"model": model, "status": status, "error": " ".join(str(error).split())})
    return row


def run_model(model, dataset, run_dir, sources, label=None):
    """Train and test one model; returns its row. Exceptions become a ``failed`` row (the traceback goes
    to ``<label>.log`` and the row's JSON); KeyboardInterrupt stops the comparison, to be resumed.
    ``label`` names the run's files (``<Model>.seed<S>`` with several seeds; the model by default)."""
    label = label or model
    log_path = os.path.join(run_dir, f"{label}.log")
    config = None
    try:
        config = Config.from_sources(model, dataset, sources)
        with model_log(config, log_path):
            try:
                write_config(config, os.path.join(run_dir, f"{label}.config.yaml"))
                check_item_features(config)
                return result_row(model, run_recbole_mql(model, dataset, sources=sources))
            except ItemFeaturesMissing as e:  # cannot run on this dataset as configured; the message says the fix
                logging.getLogger().warning(f"{model} skipped: {e}")
                return unfinished_row(model, "skipped", e)
            except Exception:
                logging.getLogger().exception(f"{model} failed")
                raise
    except Exception as e:
        row = unfinished_row(model, "failed", f"{type(e).__name__}: {e}")
        row["traceback"] = traceback.format_exc()
        if config is None:  # no log handler was open: keep the error beside the other models' logs
            write_text(log_path, row["traceback"])
        return row
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ reference
def load_reference(dataset):
    """``properties/reference/<dataset>.yaml``: ``{"sources": {key: citation}, "published": [rows]}``."""
    path = os.path.join(REFERENCE_DIR, f"{dataset}.yaml")
    if not os.path.isfile(path):
        known = ", ".join(yaml_names(REFERENCE_DIR)) or "none"
        raise CompareError(f"No published numbers for {dataset}: {path} is missing (have: {known}). "
                           f"Write it like properties/reference/Instruments.yaml, or leave out --with_reference.")
    with open(path, encoding="utf-8") as f:
        reference = yaml.safe_load(f) or {}
    sources, published = reference.get("sources") or {}, reference.get("published") or []
    bad = [r for r in published if not isinstance(r, dict) or r.get("source") not in sources or "model" not in r]
    if bad:
        raise CompareError(f"{path}: every entry of 'published' needs a model and a source listed under 'sources' "
                           f"(bad: {bad[0]}).")
    return {"path": path, "sources": sources, "published": published}


def reference_rows(rows, reference):
    """Ours, each published row of the same model, and ours / published per metric, model by model
    (``of`` names the compared model; it is not a column)."""
    table = []
    for row in rows:
        entries = [p for p in reference["published"] if p["model"] == row["model"]]
        if not entries:
            continue
        table.append({"model": row["model"], "source": "ours", **{name: row.get(name) for _, name in METRICS}})
        for entry in entries:
            label = entry.get("label") or entry["model"]
            table.append({"model": label, "source": f"published: {entry['source']}", "of": row["model"],
                          **{name: entry.get(key) for key, name in METRICS}})
            table.append({"model": label, "source": f"ours / {entry['source']}", "of": row["model"],
                          **{name: ratio(row.get(name), entry.get(key)) for key, name in METRICS}})
    return table


def ratio(ours, published):
    return round(ours / published, 3) if ours is not None and published else None


# --------------------------------------------------------------------------------------- report
def cell(value, column):
    """Markdown text of one cell: metrics to 4 places, seconds to 1, counts with separators."""
    if isinstance(value, tuple):  # (metric, half width of its interval, marker)
        mean, half, marker = value
        return f"{mean:.4f}" + (f" ±{half:.4f}" if half is not None else "") + marker
    if value is None or value == "":
        return ""
    if column == "parameter count":
        return f"{int(value):,}"
    if column in ("train seconds", "eval seconds"):
        return f"{float(value):.1f}"
    if column in METRIC_NAMES:
        return f"{float(value):.4f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c), c) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(rows, columns):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows([{c: "" if row.get(c) is None else row.get(c) for c in columns} for row in rows])
    return out.getvalue()


def markdown_report(dataset, rows, ref_rows, reference, run_dir, stats=None):
    stats = stats or {}
    shown = [{**row, **{name: (row[name], _half(row, name), "*" if name in row.get("better", ()) else "")
                        for name in METRIC_NAMES if row.get(name) is not None}} for row in rows]
    spread = [{**row, **{name: (row[name], row.get(f"{name} sd"), " (sd)") for name in METRIC_NAMES
                         if row.get(name) is not None}} for row in stats.get("seed_rows") or []]
    parts = [f"# {dataset}: side-by-side comparison", "",
             f"Test metrics (full ranking, leave-one-out), one split and seed for every model. Folder: `{run_dir}`. "
             "Best epoch counts from 0, as RecBole's log does; seconds are wall time. "
             f"± half the {stats.get('confidence', 0.95):.0%} bootstrap interval over the test users "
             "(users resampled; training randomness is not covered: use several seeds for that)"
             + (f"; * better than {stats['baseline']} (paired permutation test, Holm-corrected, significance.md)"
                if stats.get("baseline") else "")
             + ". Scoring: strict = a hit is the target item itself; shared_code = the authors' scoring (a predicted "
               "code counts for every item that has it).",
             "", markdown_table(shown, ["seed"] + COLUMNS if spread else COLUMNS)]
    if spread:
        parts += ["", "## Over seeds", "", "Mean ± sample standard deviation over the seeds (training randomness); "
                  "the rows above give each seed's interval over users.", "",
                  markdown_table(spread, ["model"] + METRIC_NAMES)]
    if reference is not None:
        parts += ["", "## Published numbers", "", markdown_table(ref_rows, REFERENCE_COLUMNS), ""]
        parts += [f"- **{key}**: {citation}" for key, citation in reference["sources"].items()]
    return "\n".join(parts) + "\n"


def plot_metrics(rows, ref_rows, path):
    """Grouped bars: one group per metric, one bar per finished model; published values hatched.

    Uses matplotlib's object API on an Agg canvas: no pyplot state, no display needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ours = [row for row in rows if row["status"] == "ok"]
    published = [r for r in ref_rows if r["source"].startswith("published")]
    names = list(dict.fromkeys([row["model"] for row in ours] + [r["of"] for r in published]))
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    series = [(row["model"], row, colours[row["model"]], None) for row in ours]
    series += [(f"{r['model']} ({r['source']})", r, colours[r["of"]], "//") for r in published]
    fig = Figure(figsize=(max(7.0, 0.22 * len(series) * len(METRICS) + 2.5), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / max(len(series), 1)
    for i, (label, values, colour, hatch) in enumerate(series):
        positions = [m + (i - (len(series) - 1) / 2) * width for m in range(len(METRICS))]
        heights = [values.get(name) or 0.0 for name in METRIC_NAMES]
        errors = [[max(h - (values.get(f"{n} low") if values.get(f"{n} low") is not None else h), 0) for h, n in
                   zip(heights, METRIC_NAMES)],
                  [max((values.get(f"{n} high") if values.get(f"{n} high") is not None else h) - h, 0) for h, n in
                   zip(heights, METRIC_NAMES)]]
        ax.bar(positions, heights, width, label=label, color=colour, yerr=errors, capsize=1.5,
               error_kw={"linewidth": 0.6}, hatch=hatch, alpha=0.45 if hatch else 1.0,
               edgecolor="black" if hatch else None, linewidth=0.3)
    ax.set_xticks(range(len(METRICS)), [name for _, name in METRICS])
    ax.set_ylabel("test score")
    ax.set_title("Models on one split (full ranking)")
    if series:
        # Beside the axes, not over the bars.
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def run_label(row):
    """The name of a row's files: the model, or ``<Model>.seed<S>`` in a comparison over seeds."""
    return row["model"] if row.get("seed") is None else f"{row['model']}.seed{row['seed']}"


def seed_groups(runs):
    """Run labels grouped by seed (one group without seeds), in table order."""
    groups = {}
    for label, row in runs.items():
        groups.setdefault(row.get("seed"), []).append(label)
    return list(groups.values())


def seed_summary(rows, seeds):
    """One row per model: mean and sample standard deviation over its finished seeds."""
    out = []
    for model in dict.fromkeys(row["model"] for row in rows):
        done = [r for r in rows if r["model"] == model and r["status"] == "ok"]
        if not done:
            continue
        row = {"model": f"{model} (mean of {len(done)} of {len(seeds)} seeds)", "status": "ok",
               "scoring": done[0].get("scoring", "")}
        for name in METRIC_NAMES:
            mean, sd = seed_spread([r.get(name) for r in done])
            row[name], row[f"{name} sd"] = round(mean, 4), None if math.isnan(sd) else round(sd, 4)
        out.append(row)
    return out


def _half(row, name):
    low, high = row.get(f"{name} low"), row.get(f"{name} high")
    return None if low is None or high is None else (high - low) / 2


def add_statistics(run_dir, rows, baseline=None, n_resamples=1000, confidence=0.95, seed=2020):
    """Bootstrap intervals per model and metric (into the rows), and the paired tests between the
    models whose per-user ranks were kept: significance.csv / .md; returns the test rows."""
    runs = {run_label(row): row for row in rows if row["status"] == "ok"}
    files = {label: ranks_file(run_dir, label) for label in runs if os.path.isfile(ranks_file(run_dir, label))}
    if not files:
        return []
    ranks = aligned_ranks(files)
    metrics = [key for key, _ in METRICS]
    for label, row in runs.items():
        row["better"] = []
        if label in ranks:
            for (key, name), (low, high) in zip(METRICS, interval_columns(
                    ranks[label], metrics, n_resamples, confidence, seed).values()):
                row[f"{name} low"], row[f"{name} high"] = round(low, 4), round(high, 4)
    tests = []
    for group in seed_groups(runs):  # models are paired on the same users *and* the same seed
        group_ranks = {runs[label]["model"]: ranks[label] for label in group if label in ranks}
        if len(group_ranks) >= 2 and (baseline is None or baseline in group_ranks):
            seed_of = runs[group[0]].get("seed")
            tests += [{**t, "seed": seed_of} if seed_of is not None else t
                      for t in significance_rows(group_ranks, metrics, baseline, n_resamples, confidence, seed,
                                                 adjust=False)]
    if not tests:
        return []
    adjust_pvalues(tests, confidence)  # Holm over every test of the comparison, all seeds together
    names = dict(METRICS)
    for test in tests:
        if baseline and test["significant"] and test["difference"] > 0:
            label = test["model"] if test.get("seed") is None else f"{test['model']}.seed{test['seed']}"
            runs[label]["better"].append(names[test["metric"]])
    columns = list(tests[0])
    write_text(os.path.join(run_dir, "significance.csv"), csv_text(tests, columns))
    write_text(os.path.join(run_dir, "significance.md"),
               f"# Paired differences on the same test users ({len(next(iter(ranks.values())))} users)\n\n"
               f"Bootstrap interval of the mean difference ({n_resamples} resamples, seed {seed}); two-sided paired "
               f"sign-flip permutation test and Wilcoxon signed-rank test; p-values Holm-corrected over the "
               f"{len(tests)} comparisons; significant: permutation p (Holm) < {1 - confidence:.2f}.\n\n"
               + significance_markdown(tests, confidence))
    return tests


def write_report(run_dir, dataset, rows, reference, stats=None):
    """results.csv / results.md / metrics.png (+ reference.csv); returns the Markdown text."""
    stats = stats or {}
    ref_rows = reference_rows(rows, reference) if reference is not None else []
    add_statistics(run_dir, rows, stats.get("baseline"), stats.get("bootstrap_resamples", 1000),
                   stats.get("confidence", 0.95))
    seed_rows = stats.get("seed_rows")
    write_text(os.path.join(run_dir, "results.csv"),
               csv_text(rows, (["seed"] if seed_rows else []) + COLUMNS + CI_COLUMNS))
    if seed_rows:
        write_text(os.path.join(run_dir, "seeds.csv"),
                   csv_text(seed_rows, ["model"] + [c for n in METRIC_NAMES for c in (n, f"{n} sd")]))
    if reference is not None:
        write_text(os.path.join(run_dir, "reference.csv"), csv_text(ref_rows, REFERENCE_COLUMNS))
    text = markdown_report(dataset, rows, ref_rows, reference, run_dir, stats)
    write_text(os.path.join(run_dir, "results.md"), text)
    plot_metrics(rows, ref_rows, os.path.join(run_dir, "metrics.png"))
    return text, ref_rows


# ------------------------------------------------------------------------------------ the run
def model_names(models):
    """``"A,B"`` or ``["A", "B"]`` -> ``["A", "B"]``, without repeats; none is an error."""
    names = models.split(",") if isinstance(models, str) else list(models or [])
    names = list(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    if not names:
        raise CompareError("No model to compare: pass --compare=SASRec,BERT4Rec,FDSA,TIGER,MQL4GRec (comma-separated).")
    return names


def checked_models(models, dataset, sources):
    """{model: resolved settings} of every model, checked before the first one trains: an unknown name
    or a config a model cannot run with is a :class:`CompareError` now, not hours into the comparison."""
    unknown = []
    for model in models:
        try:
            get_model(model)
        except UnknownModelError as e:
            unknown.append(str(e))
    if unknown:
        raise CompareError(" ".join(unknown) + " Nothing was run.")
    resolved = {}
    for model in models:
        try:
            config = Config.from_sources(model, dataset, sources)
        except Exception as e:  # noqa: BLE001 - a bad key or value (RecBole raises several types): one line
            raise CompareError(f"{model}: {e} Nothing was run.") from None
        resolved[model] = resolved_settings(config)
    return resolved


# Keys that may differ between the commands of one comparison: where files go, how much is printed,
# which device runs it. Every other resolved key must stay the same for the rows to compare.
RUN_LOCAL_KEYS = {"checkpoint_dir", "ranks_file", "resume", "show_progress", "state", "verbose", "device", "gpu_id", "use_gpu",
                  "local_rank", "single_spec", "nproc", "world_size", "ip", "port", "offset", "worker", "data_path",
                  "source", "log_wandb", "wandb_project"}


def resolved_settings(config):
    """A model's resolved config without :data:`RUN_LOCAL_KEYS`, as plain data (what the manifest compares)."""
    return plain({k: v for k, v in config.final_config_dict.items() if k not in RUN_LOCAL_KEYS})


def config_file_contents(files):
    """The keys of each config file (what is compared on resume; a renamed file with the same keys is the
    same setting, an edited one is not)."""
    return [plain(load_yaml_file(path)) for path in files]


def model_sources(sources, protocol, model, dataset, run_dir, seed=None):
    """``sources`` for ``model`` (with ``seed``, when a comparison runs several): checkpoints go into
    the results folder unless ``checkpoint_dir`` is set, so that ``--recommend`` finds them beside the
    table (``checkpoints/seed<S>`` per seed); an interrupted run resumes."""
    given = {**protocol_config(protocol, model), **sources.config_dict}
    extra = {} if seed is None else {"seed": seed}
    if "checkpoint_dir" not in given and "checkpoint_dir" not in sources.cmd_args:
        extra["checkpoint_dir"] = os.path.join(run_dir, "checkpoints", *([] if seed is None else [f"seed{seed}"]))
    label = model if seed is None else f"{model}.seed{seed}"
    extra["ranks_file"] = ranks_file(run_dir, label)  # per-user test ranks: intervals and paired tests
    extra.update(interrupted_state(model, dataset, {**given, **extra}, sources.cmd_args))
    return sources.with_config_dict(extra)


def interrupted_state(model, dataset, model_dict, cmd_args):
    """``{"resume": path}`` when an interrupted run of ``model`` left its last training state in the
    comparison's checkpoint folder (the generative trainers write one every epoch), else ``{}``."""
    if "resume" in cmd_args or model_dict.get("resume"):
        return {}
    folder = cmd_args.get("checkpoint_dir") or model_dict["checkpoint_dir"]
    path = os.path.join(folder, f"{model}-{dataset}-last.pth")
    if not os.path.isfile(path):
        return {}
    print(f"[compare] {model}: resuming the interrupted run from {path}")
    return {"resume": path}


def summary(row):
    if row["status"] == "ok":
        metrics = ", ".join(f"{name} {cell(row[name], name) or 'n/a'}" for name in ("NDCG@10", "HR@10"))
        return f"ok: test {metrics}, {row['train seconds']:.0f} s training"
    return f"{row['status']}: {row['error']}"


def run_comparison(models, dataset, config_file_list=None, config_dict=None, results_dir="results",
                   with_reference=False, resume_dir=None, protocol=None, sources=None, baseline=None,
                   bootstrap_resamples=1000, confidence=0.95, seeds=None):
    """Train and test each of ``models`` on ``dataset`` in turn; write and print the table.

    Every model gets the same config sources (hence the same seed and split): ``sources`` (a
    :class:`~recbole_mql.config.ConfigSources`, as the CLI passes it) or ``config_file_list``,
    ``config_dict`` and ``protocol`` (``"cpu"``, ``"paper"`` or a YAML path), which sets each model's keys.
    Returns ``{"run_dir", "rows", "reference_rows", "report"}``; rows follow the order of ``models``.
    Every model's per-user test ranks are kept (``<Model>.ranks.csv.gz``): the table gives bootstrap
    intervals over users, and significance.md the paired tests (against ``baseline``, or every pair).
    ``seeds`` (e.g. ``[2020, 2021, 2022]``) runs every model once per seed (files ``<Model>.seed<S>.*``),
    pairs models within a seed, and adds the mean and spread over seeds (``seeds.csv``).
    """
    models = model_names(models)
    if baseline is not None and baseline not in models:
        raise CompareError(f"--baseline={baseline} is not one of the compared models ({', '.join(models)}).")
    if not 0 < confidence < 1 or bootstrap_resamples < 1:
        raise CompareError(f"--confidence must lie in (0, 1) and --bootstrap_resamples be >= 1 "
                           f"(got {confidence}, {bootstrap_resamples}).")
    sources = ConfigSources.given(sources, config_file_list=config_file_list, config_dict=config_dict,
                                  protocol=protocol)
    try:
        protocol_spec = checked_protocol(sources.protocol)
    except ProtocolError as e:
        raise CompareError(str(e)) from None
    resolved = checked_models(models, dataset, sources)  # every name and config, before hours of training
    reference = load_reference(dataset) if with_reference else None
    run_dir = open_run_dir(results_dir, dataset, resume_dir)
    settings = plain({"protocol": {k: protocol_spec[k] for k in ("common", "models")},
                      "config_files": config_file_contents(sources.config_file_list),
                      "config_dict": sources.config_dict, "cmd_args": sources.cmd_args})
    seeds = [int(s) for s in seeds] if seeds else None
    manifest = {"dataset": dataset, "models": models, "protocol": sources.protocol, "settings": settings,
                "seeds": seeds,
                "config_file_names": list(sources.config_file_list), "resolved": resolved}
    write_json(os.path.join(run_dir, MANIFEST), checked_manifest(run_dir, manifest))
    rows = []
    runs = [(model, seed) for model in models for seed in (seeds or [None])]
    for i, (model, seed) in enumerate(runs, 1):
        label = model if seed is None else f"{model}.seed{seed}"
        row = finished_row(run_dir, label)
        if row is not None:
            print(f"[compare] {i}/{len(runs)} {label}: finished earlier in {run_dir}, not run again")
        else:
            print(f"[compare] {i}/{len(runs)} {label} on {dataset}: running")
            try:
                row = run_model(model, dataset, run_dir,
                                model_sources(sources, protocol_spec, model, dataset, run_dir, seed), label)
                if seed is not None:
                    row["seed"] = seed
            except KeyboardInterrupt:
                raise TrainingInterrupted(
                    f"interrupted during {model}: run the same command with --resume_dir={run_dir} to go on (finished "
                    f"models are kept; MQL4GRec and TIGER continue from their last finished epoch).") from None
            write_json(result_file(run_dir, label), row)
        print(f"[compare] {label}: {summary(row)}")
        rows.append(row)
    stats = {"baseline": baseline, "bootstrap_resamples": bootstrap_resamples, "confidence": confidence,
             "seed_rows": seed_summary(rows, seeds) if seeds else None}
    report, ref_rows = write_report(run_dir, dataset, rows, reference, stats)
    print(report)
    return {"run_dir": run_dir, "rows": rows, "reference_rows": ref_rows, "report": report}
