"""Ablation report for a multirun folder: ``python -m autotimm.report outputs/<task>/multiruns/<time>``.

Reads every job folder (``<n>/.hydra/overrides.yaml`` and ``<n>/metrics.json``) and writes, under ``<dir>/report/``:
``report.csv`` (one row per job: swept values, status, the optimized metric, every other final metric, the error of a
failed job), ``report.md`` (the same as a markdown table, best first) and ``<param>.png`` (the optimized metric
against each swept parameter; failed jobs drawn as red crosses). Failed and unfinished jobs are rows, never missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

FAILED, INCOMPLETE = "failed", "incomplete"
HIDDEN = ("lr-", "train/lr", "train/grad_norm", "train/weight_norm", "train/nonfinite")


# the cost of each setting, shown beside its quality: parameters, forward GFLOPs per image, training images/s
COST_KEYS = ("model/params_total", "model/gflops", "train/img_per_s")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_job(job: Path) -> dict[str, Any]:
    overrides = {}
    ov_file = job / ".hydra" / "overrides.yaml"
    for item in OmegaConf.to_container(OmegaConf.load(ov_file)) if ov_file.is_file() else []:
        key, _, val = str(item).lstrip("+~").partition("=")
        overrides[key] = _value(val)
    metrics_file = job / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    status = metrics.pop("status", None) or INCOMPLETE
    monitor = metrics.pop("monitor", None)
    if monitor is None:
        cfg_file = job / ".hydra" / "config.yaml"
        monitor = OmegaConf.load(cfg_file).get("optimized_metric") if cfg_file.is_file() else None
    return {"job": job.name, "status": status, "overrides": overrides, "monitor": monitor,
            "error": metrics.pop("error", ""), "metrics": metrics}


def collect(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    jobs = [read_job(p) for p in sorted(sweep_dir.iterdir(), key=lambda p: (len(p.name), p.name))
            if p.is_dir() and (p / ".hydra").is_dir()]
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no job folders (<n>/.hydra/) found; pass a multirun folder such as "
                                f"outputs/<task_name>/multiruns/<time>")
    keys = sorted({k for j in jobs for k in j["overrides"]})
    swept = [k for k in keys if len({json.dumps(j["overrides"].get(k), sort_keys=True) for j in jobs}) > 1]
    fixed = {k: jobs[0]["overrides"].get(k) for k in keys if k not in swept}
    return jobs, swept, fixed


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a folder; pass a multirun folder")
    out = Path(out_dir) if out_dir else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    jobs, swept, fixed = collect(sweep_dir)
    monitor = next((j["monitor"] for j in jobs if j["monitor"]), None)
    metric_keys = sorted({k for j in jobs for k, v in j["metrics"].items()
                          if isinstance(v, (int, float)) and not k.startswith(HIDDEN) and k != monitor
                          and k not in ("global_step", "best_model_score")})
    header = ["job", "status", *swept, *([monitor] if monitor else []), *metric_keys, "error"]
    rows = [[j["job"], j["status"], *[j["overrides"].get(k) for k in swept],
             *([j["metrics"].get(monitor)] if monitor else []), *[j["metrics"].get(k) for k in metric_keys],
             j["error"].splitlines()[0] if j["error"] else ""] for j in jobs]
    with open(out / "report.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])

    def sort_key(r):
        v = r[2 + len(swept)] if monitor else None
        return (r[1] != "completed", -(v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf))

    shown = ["job", "status", *swept, *([monitor] if monitor else []),
             *[k for k in metric_keys if k.startswith(("val/", "test/"))][:6],
             *[k for k in COST_KEYS if k in metric_keys], "error"]
    idx = [header.index(c) for c in shown]
    lines = [f"# Ablation report: {sweep_dir}", "",
             f"{len(jobs)} jobs, {sum(j['status'] == 'completed' for j in jobs)} completed, "
             f"{sum(j['status'] == FAILED for j in jobs)} failed, "
             f"{sum(j['status'] == INCOMPLETE for j in jobs)} incomplete. Optimized metric: `{monitor}`.", ""]
    if fixed:
        lines += ["Fixed overrides: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in fixed.items()), ""]
    lines += ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for r in sorted(rows, key=sort_key):
        lines.append("| " + " | ".join(_fmt(r[i]).replace("|", "/") for i in idx) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    paths = {"csv": out / "report.csv", "md": out / "report.md"}
    if monitor:
        paths.update(_plots(jobs, swept, monitor, out))
    return paths


def _plots(jobs, swept, monitor, out: Path) -> dict[str, Path]:
    from matplotlib.figure import Figure  # no pyplot: no backend switch, no global state (safe in notebooks)

    paths = {}
    for key in swept:
        values = [j["overrides"].get(key) for j in jobs]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        cats = sorted({json.dumps(v) for v in values}) if not numeric else None
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        ok = [(j["overrides"].get(key), j["metrics"].get(monitor)) for j in jobs if j["status"] == "completed"]
        bad = [j["overrides"].get(key) for j in jobs if j["status"] != "completed"]
        pos = (lambda v: v) if numeric else (lambda v, cats=cats: cats.index(json.dumps(v)))
        if ok:
            ax.scatter([pos(v) for v, _ in ok], [m if m is not None else math.nan for _, m in ok], label="completed")
        if bad:
            lo = min([m for _, m in ok if isinstance(m, (int, float))], default=0.0)
            ax.scatter([pos(v) for v in bad], [lo] * len(bad), marker="x", color="red", label="failed / incomplete")
        if not numeric:
            ax.set_xticks(range(len(cats)), [json.loads(c) for c in cats], rotation=20)
        ax.set_xlabel(key)
        ax.set_ylabel(monitor)
        ax.set_title(f"{monitor} vs {key}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        paths[key] = path
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", help="a multirun folder: outputs/<task_name>/multiruns/<time>")
    p.add_argument("--out", default=None, help="output folder (default: <sweep_dir>/report)")
    args = p.parse_args(argv)
    paths = write_report(args.sweep_dir, args.out)
    print(paths["md"].read_text())
    print("written:", ", ".join(str(v) for v in paths.values()))


if __name__ == "__main__":
    main()
