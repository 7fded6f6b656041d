"""Ablation report for a multirun folder: ``python -m autotimm.report outputs/<task>/multiruns/<time>``.

Reads every job folder (``<n>/.hydra/overrides.yaml`` and ``<n>/metrics.json``). Jobs that differ only in ``seed``
are one setting repeated: per setting, the number of completed seeds ``n``, failed and unfinished seeds (counted,
never averaged in), and for the optimized metric and every final metric the mean, the standard deviation over seeds
and the half-width of a 95% confidence interval (Student's t). Writes, under ``<dir>/report/``:

- ``report.md``: one sentence first, saying whether the best setting's lead over the runner-up exceeds the spread
  between seeds (Welch's t-test on the optimized metric, 5% level), then the settings (``mean ± std``) and the jobs;
- ``report.csv``: one row per setting (``n``, ``failed``, ``<metric>_mean``, ``<metric>_std``, ``<metric>_ci95``);
- ``jobs.csv``: one row per job (swept values, status, every final metric, the error of a failed job);
- ``report.tex``: a booktabs table (``mean ± std``, the best value of each column in bold);
- ``<param>.png``: the optimized metric's mean with ±1 std error bars against each swept parameter, each seed a
  faint dot, failed seeds red crosses, on a y-axis that shows the seeds' spread in context.
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
# the cost of each setting, shown beside its quality: parameters, forward GFLOPs per image, training images/s and
# minutes of fit (training + validation wall time)
COST_KEYS = ("model/params_total", "model/gflops", "train/img_per_s", "time/fit_min")
SEED = "seed"


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
    cfg_file = job / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(cfg_file) if cfg_file.is_file() else {}
    if monitor is None:
        monitor = cfg.get("optimized_metric")
    return {"job": job.name, "status": status, "overrides": overrides, "monitor": monitor,
            "mode": cfg.get("optimized_mode") or "max", "error": metrics.pop("error", ""), "metrics": metrics}


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


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def stats(values: list[float]) -> dict[str, float]:
    """n, mean, sample standard deviation (ddof 1) and the 95% confidence interval's half-width (Student's t);
    std and ci95 are NaN for fewer than two values."""
    from scipy import stats as st

    n = len(values)
    mean = sum(values) / n if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "std": math.nan, "ci95": math.nan}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"n": n, "mean": mean, "std": std, "ci95": float(st.t.ppf(0.975, n - 1)) * std / math.sqrt(n)}


def settings_of(jobs: list[dict], swept: list[str], metric_keys: list[str]) -> list[dict[str, Any]]:
    """Group the jobs that differ only in ``seed``; summarise each metric over the completed ones."""
    keys = [k for k in swept if k != SEED]
    groups: dict[str, dict[str, Any]] = {}
    for j in jobs:
        values = {k: j["overrides"].get(k) for k in keys}
        g = groups.setdefault(json.dumps(values, sort_keys=True), {"values": values, "jobs": []})
        g["jobs"].append(j)
    out = []
    for g in groups.values():
        done = [j for j in g["jobs"] if j["status"] == "completed"]
        summary = {k: stats([v for v in (_number(j["metrics"].get(k)) for j in done) if v is not None])
                   for k in metric_keys}
        out.append({"values": g["values"], "n": len(done), "jobs": g["jobs"], "stats": summary,
                    "failed": sum(j["status"] == FAILED for j in g["jobs"]),
                    "incomplete": sum(j["status"] == INCOMPLETE for j in g["jobs"]),
                    "seeds": [j["overrides"].get(SEED) for j in done],
                    "samples": {k: [v for v in (_number(j["metrics"].get(k)) for j in done) if v is not None]
                                for k in metric_keys}})
    return out


def _label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "(one setting)"


def verdict(settings: list[dict], monitor: str | None, mode: str = "max") -> str:
    """One sentence: does the best setting's lead over the runner-up exceed the spread between seeds?"""
    if not monitor:
        return "No optimized metric is recorded, so no setting is ranked."
    ranked = [s for s in settings if s["n"] and not math.isnan(s["stats"][monitor]["mean"])]
    ranked.sort(key=lambda s: s["stats"][monitor]["mean"], reverse=mode != "min")
    if len(ranked) < 2:
        return f"Fewer than two settings completed, so nothing is compared on `{monitor}`."
    best, second = ranked[0], ranked[1]
    b, r = best["stats"][monitor], second["stats"][monitor]
    head = (f"Best: `{_label(best['values'])}` with `{monitor}` {_pm(b)} (n={b['n']}); runner-up "
            f"`{_label(second['values'])}` {_pm(r)} (n={r['n']}).")
    if b["n"] < 2 or r["n"] < 2:
        return (head + " With a single seed per setting there is no spread to compare the lead against: the "
                       "difference is not evidence; rerun with seeds (e.g. `seeds=3`).")
    from scipy import stats as st

    p = float(st.ttest_ind(best["samples"][monitor], second["samples"][monitor], equal_var=False).pvalue)
    if math.isnan(p):  # identical values within both groups
        p = 1.0 if b["mean"] == r["mean"] else 0.0
    word = "exceeds" if p < 0.05 else "does not exceed"
    return head + f" Welch's t-test: p = {p:.3g}, so the lead {word} the spread between seeds (5% level)."


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def _pm(s: dict[str, float], digits: int = 4) -> str:
    if math.isnan(s["mean"]):
        return ""
    return f"{s['mean']:.{digits}f}" if math.isnan(s["std"]) else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a folder; pass a multirun folder")
    out = Path(out_dir) if out_dir else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    jobs, swept, fixed = collect(sweep_dir)
    monitor = next((j["monitor"] for j in jobs if j["monitor"]), None)
    mode = next((j["mode"] for j in jobs if j["monitor"]), "max")
    metric_keys = sorted({k for j in jobs for k, v in j["metrics"].items()
                          if _number(v) is not None and not k.startswith(HIDDEN) and k != monitor
                          and k not in ("global_step", "best_model_score")})
    all_keys = ([monitor] if monitor else []) + metric_keys
    keys = [k for k in swept if k != SEED]

    # jobs.csv: every job
    header = ["job", "status", *swept, *all_keys, "error"]
    rows = [[j["job"], j["status"], *[j["overrides"].get(k) for k in swept],
             *[j["metrics"].get(k) for k in all_keys], j["error"].splitlines()[0] if j["error"] else ""]
            for j in jobs]
    with open(out / "jobs.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])

    # report.csv: every setting
    settings = settings_of(jobs, swept, all_keys)
    if monitor:
        settings.sort(key=lambda s: (not s["n"], -_signed(s["stats"][monitor]["mean"], mode)))
    header = [*keys, "n", "failed", "incomplete", *[f"{k}_{w}" for k in all_keys for w in ("mean", "std", "ci95")]]
    with open(out / "report.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *[[*[s["values"][k] for k in keys], s["n"], s["failed"], s["incomplete"],
                                            *[_csv(s["stats"][k][w]) for k in all_keys
                                              for w in ("mean", "std", "ci95")]] for s in settings]])

    # report.md
    shown = (([monitor] if monitor else []) + [k for k in metric_keys if k.startswith(("val/", "test/"))][:5]
             + [k for k in COST_KEYS if k in metric_keys])
    n_seeds = sorted({len(s["jobs"]) for s in settings})
    lines = [f"# Ablation report: {sweep_dir}", "", verdict(settings, monitor, mode), "",
             f"{len(jobs)} jobs in {len(settings)} setting(s) of {'/'.join(map(str, n_seeds))} seed(s): "
             f"{sum(j['status'] == 'completed' for j in jobs)} completed, "
             f"{sum(j['status'] == FAILED for j in jobs)} failed, "
             f"{sum(j['status'] == INCOMPLETE for j in jobs)} incomplete. Optimized metric: `{monitor}` "
             f"({mode}). Values are mean ± standard deviation over the completed seeds; failed seeds are counted, "
             f"not averaged in.", ""]
    if fixed:
        lines += ["Fixed overrides: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in fixed.items()), ""]
    cols = [*keys, "n", "failed", *shown]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in settings:
        cells = [str(s["values"][k]) for k in keys] + [str(s["n"]), str(s["failed"] + s["incomplete"])]
        cells += [_pm(s["stats"][k]) for k in shown]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    jcols = ["job", "status", *swept, *shown, "error"]
    lines += ["", "## Jobs", "", "| " + " | ".join(jcols) + " |", "|" + "---|" * len(jcols)]
    for j in jobs:
        cells = [j["job"], j["status"], *[str(j["overrides"].get(k, "")) for k in swept],
                 *[_fmt(j["metrics"].get(k)) for k in shown], j["error"].splitlines()[0] if j["error"] else ""]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.tex").write_text(latex_table(settings, keys, shown, monitor, mode))
    paths = {"csv": out / "report.csv", "jobs": out / "jobs.csv", "md": out / "report.md", "tex": out / "report.tex"}
    if monitor:
        paths.update(_plots(settings, jobs, keys, monitor, out))
    run_dir = log_to_wandb(sweep_dir, out, paths, lines[2])
    if run_dir is not None:
        paths["wandb"] = run_dir
    return paths


def log_to_wandb(sweep_dir: Path, out: Path, paths: dict[str, Path], sentence: str) -> Path | None:
    """When the sweep's runs were logged to W&B (``logger=wandb``), log one summary run in their group: the
    settings table as a ``wandb.Table``, the plots as images and the verdict sentence in its summary. Follows
    ``WANDB_MODE`` (offline runs land in ``<report dir>/wandb/``). Returns the run's folder, or None."""
    cfg_file = next(iter(sorted(sweep_dir.glob("*/.hydra/config.yaml"))), None)
    cfg = OmegaConf.load(cfg_file) if cfg_file else {}
    wb = (cfg.get("logger") or {}).get("wandb") if cfg else None
    if not wb:
        return None
    import wandb

    # the group the jobs' runs used (cli.common.wandb_run_defaults): the configured one, else <task>/<sweep folder>
    group = wb.get("group") or f"{cfg.get('task_name', 'sweep')}/{sweep_dir.name}"
    rows = list(csv.reader(open(paths["csv"])))
    run = wandb.init(project=wb.get("project"), entity=wb.get("entity"), group=group, job_type="ablation-report",
                     name=f"report {group}", dir=str(out), config={"sweep_dir": str(sweep_dir)})
    try:
        run.log({"report/settings": wandb.Table(columns=rows[0], data=[[_value(c) if c else None for c in r]
                                                                      for r in rows[1:]]),
                 **{f"report/{k}": wandb.Image(str(v)) for k, v in paths.items() if v.suffix == ".png"}})
        run.summary["report/verdict"] = sentence
        return Path(run.dir).parent
    finally:
        run.finish()


def _signed(v: float, mode: str) -> float:
    if math.isnan(v):
        return -math.inf
    return v if mode != "min" else -v


def _csv(v: float) -> Any:
    return "" if math.isnan(v) else v


def _tex(text: str) -> str:
    return str(text).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def latex_table(settings: list[dict], keys: list[str], shown: list[str], monitor: str | None, mode: str) -> str:
    """booktabs table: one row per setting, ``mean ± std`` per metric, the best mean of each column in bold
    (lowest for losses and for a ``min`` optimized metric, else highest)."""
    def lower_is_better(k):
        return "loss" in k or (k == monitor and mode == "min")

    best = {}
    for k in shown:
        means = [s["stats"][k]["mean"] for s in settings if not math.isnan(s["stats"][k]["mean"])]
        if means and k not in COST_KEYS:
            best[k] = min(means) if lower_is_better(k) else max(means)
    lines = [r"\begin{tabular}{" + "l" * len(keys) + "r" + "c" * len(shown) + "}", r"\toprule",
             " & ".join(_tex(c) for c in [*keys, "n", *shown]) + r" \\", r"\midrule"]
    for s in settings:
        cells = [_tex(str(s["values"][k])) for k in keys] + [str(s["n"])]
        for k in shown:
            st = s["stats"][k]
            cell = "" if math.isnan(st["mean"]) else (f"{st['mean']:.4f}" if math.isnan(st["std"])
                                                      else f"{st['mean']:.4f} $\\pm$ {st['std']:.4f}")
            cells.append(rf"\textbf{{{cell}}}" if cell and best.get(k) == st["mean"] else cell)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def _plots(settings, jobs, keys, monitor, out: Path) -> dict[str, Path]:
    """Per swept parameter: mean ± 1 std over seeds (error bars), each seed a faint dot, failed seeds red crosses.
    The y-axis spans the seeds' values with a margin of at least two pooled standard deviations, so a gap is seen
    against the spread, not magnified by a tight axis."""
    from matplotlib.figure import Figure  # no pyplot: no backend switch, no global state (safe in notebooks)

    paths = {}
    seeds = [v for s in settings for v in s["samples"][monitor]]
    stds = [s["stats"][monitor]["std"] for s in settings if not math.isnan(s["stats"][monitor]["std"])]
    for key in keys:
        values = [s["values"][key] for s in settings]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        cats = sorted({json.dumps(v) for v in values}) if not numeric else None
        pos = (lambda v: v) if numeric else (lambda v, cats=cats: cats.index(json.dumps(v)))
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        for s in settings:
            x = pos(s["values"][key])
            ax.scatter([x] * len(s["samples"][monitor]), s["samples"][monitor], color="C0", alpha=0.3, s=14,
                       label="seeds" if s is settings[0] else None)
        done = [s for s in settings if s["n"]]
        ax.errorbar([pos(s["values"][key]) for s in done], [s["stats"][monitor]["mean"] for s in done],
                    yerr=[0.0 if math.isnan(s["stats"][monitor]["std"]) else s["stats"][monitor]["std"]
                          for s in done], fmt="o", color="C0", capsize=4, label="mean ± 1 std over seeds")
        if seeds:
            lo, hi = min(seeds), max(seeds)
            pad = max(2 * max(stds, default=0.0), 0.25 * (hi - lo), 1e-3)
            ax.set_ylim(lo - pad, hi + pad)
        bad = [pos(s["values"][key]) for s in settings for _ in range(s["failed"] + s["incomplete"])]
        if bad:
            ax.scatter(bad, [ax.get_ylim()[0]] * len(bad), marker="x", color="red", label="failed / incomplete seed",
                       clip_on=False)
        if not numeric:
            ax.set_xticks(range(len(cats)), [json.loads(c) for c in cats], rotation=20)
        ax.set_xlabel(key)
        ax.set_ylabel(monitor)
        ax.set_title(f"{monitor} vs {key}")
        ax.legend(fontsize=7)
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


if __name__ == "__main__":
    main()
