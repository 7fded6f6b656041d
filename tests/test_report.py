"""Ablation reports: presets run as multiruns without -m; jobs that differ only in seed are one setting, summarised
by n, mean, std and a 95% interval; failed seeds are counted, not averaged in; one sentence says whether the lead
exceeds the spread."""

import csv
import json
import math

import pytest
from scipy import stats as st

from autotimm.report import main, write_report

TINY = ["dataset.num_train=24", "dataset.num_val=8", "dataset.source_size=64", "dataset.seed=3",
        "dataset.image_size=64", "dataset.batch_size=8", "dataset.num_workers=0", "backbone=test_resnet",
        "trainer.max_epochs=1"]


@pytest.mark.slow
def test_ablation_preset_and_report(tmp_path, shapes_root, capsys):
    from test_cli import run

    # ce_weight=0 makes the dice_weight=0 job invalid: it must show up as a failed row, not vanish
    run("train.py", "experiment=ablate_loss_weights", "seeds=1", f"paths.log_dir={tmp_path}/outputs",
        f"dataset.data_dir={shapes_root}", *TINY, "loss.ce_weight=0")
    sweep = next((tmp_path / "outputs" / "ablate_loss_weights" / "multiruns").iterdir())
    paths = write_report(sweep)
    rows = list(csv.DictReader(open(paths["jobs"])))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert [float(r["loss.dice_weight"]) for r in rows] == [0.0, 0.5, 1.0, 2.0]
    assert [r["status"] for r in rows] == ["failed", "completed", "completed", "completed"]
    assert "ce_weight and dice_weight are both 0" in rows[0]["error"]
    for r in rows[1:]:
        assert 0.0 <= float(r["val/miou"]) <= 1.0 and r["val/pixel_acc"]
        assert float(r["val/miou"]) == json.loads((sweep / r["job"] / "metrics.json").read_text())["val/miou"]
        # the cost beside the quality: test_resnet + DeepLabV3+ has 980,997 parameters
        assert int(float(r["model/params_total"])) == 980997
        assert float(r["model/gflops"]) > 0 and float(r["train/img_per_s"]) > 0 and float(r["time/fit_min"]) > 0
    settings = list(csv.DictReader(open(paths["csv"])))
    assert len(settings) == 4 and {s["n"] for s in settings} == {"0", "1"}
    failed = next(s for s in settings if float(s["loss.dice_weight"]) == 0.0)
    assert (failed["n"], failed["failed"], failed["val/miou_mean"]) == ("0", "1", "")
    md = paths["md"].read_text()
    assert "With a single seed per setting there is no spread" in md.splitlines()[2]
    assert "4 jobs in 4 setting(s) of 1 seed(s): 3 completed, 1 failed, 0 incomplete" in md
    assert "Fixed overrides:" in md and "`loss.ce_weight=0`" in md
    assert md.count("| completed |") == 3 and "| failed |" in md
    png = paths["loss.dice_weight"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    main([str(sweep), "--out", str(tmp_path / "r2")])
    assert "| failed |" in capsys.readouterr().out and (tmp_path / "r2" / "report.csv").is_file()


@pytest.mark.slow
def test_two_settings_two_seeds_mean_and_std_exact(tmp_path, shapes_root):
    """A real 2-setting x 2-seed sweep: the report's means and stds equal those of the jobs' metrics.json."""
    from test_cli import run

    run("train.py", "-m", "loss.dice_weight=0.5,1.0", "seed=0,1", f"paths.log_dir={tmp_path}/outputs",
        f"dataset.data_dir={shapes_root}", *TINY, "task_name=seeds")
    sweep = next((tmp_path / "outputs" / "seeds" / "multiruns").iterdir())
    paths = write_report(sweep)
    jobs = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(4)]
    overrides = [(sweep / str(i) / ".hydra" / "overrides.yaml").read_text() for i in range(4)]
    settings = {float(s["loss.dice_weight"]): s for s in csv.DictReader(open(paths["csv"]))}
    assert set(settings) == {0.5, 1.0}
    for weight, s in settings.items():
        vals = [m["val/miou"] for m, o in zip(jobs, overrides) if f"loss.dice_weight={weight}" in o]
        assert len(vals) == 2 and s["n"] == "2"
        mean = sum(vals) / 2
        std = math.sqrt(sum((v - mean) ** 2 for v in vals))  # ddof 1 with n = 2
        assert float(s["val/miou_mean"]) == pytest.approx(mean, abs=1e-12)
        assert float(s["val/miou_std"]) == pytest.approx(std, abs=1e-12)
        assert float(s["val/miou_ci95"]) == pytest.approx(st.t.ppf(0.975, 1) * std / math.sqrt(2), abs=1e-9)
    md = paths["md"].read_text()
    assert "Welch's t-test: p = " in md.splitlines()[2]
    tex = paths["tex"].read_text()
    assert tex.startswith(r"\begin{tabular}") and r"\toprule" in tex and r"\textbf{" in tex and r"$\pm$" in tex


def fake_job(root, n, dice, seed, miou=None, error=None):
    job = root / str(n)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- loss.dice_weight={dice}\n- seed={seed}\n")
    (job / ".hydra" / "config.yaml").write_text("optimized_metric: val/miou\noptimized_mode: max\n")
    data = {"status": "failed", "error": error} if error else {"status": "completed", "val/miou": miou}
    (job / "metrics.json").write_text(json.dumps({**data, "monitor": "val/miou"}))


def test_failed_seeds_are_counted_not_averaged(tmp_path):
    a, b = [0.80, 0.82, 0.84], [0.70, 0.71]
    for i, v in enumerate(a):
        fake_job(tmp_path, i, 1.0, i, v)
    for i, v in enumerate(b):
        fake_job(tmp_path, 3 + i, 0.5, i, v)
    fake_job(tmp_path, 5, 0.5, 2, error="RuntimeError: out of memory")
    paths = write_report(tmp_path)
    s = {float(r["loss.dice_weight"]): r for r in csv.DictReader(open(paths["csv"]))}
    assert (s[0.5]["n"], s[0.5]["failed"]) == ("2", "1")
    assert float(s[0.5]["val/miou_mean"]) == pytest.approx(0.705)  # the failed seed is not a zero
    assert float(s[1.0]["val/miou_std"]) == pytest.approx(0.02)
    p = st.ttest_ind(a, b, equal_var=False).pvalue
    first = paths["md"].read_text().splitlines()[2]
    assert first.startswith("Best: `loss.dice_weight=1.0` with `val/miou` 0.8200 ± 0.0200 (n=3)")
    assert f"p = {p:.3g}, so the lead exceeds the spread between seeds" in first


def test_a_lead_within_the_noise_is_called_so(tmp_path):
    for i, v in enumerate([0.2319, 0.2500, 0.2200]):
        fake_job(tmp_path, i, 1.0, i, v)
    for i, v in enumerate([0.2364, 0.2250, 0.2300]):
        fake_job(tmp_path, 3 + i, 0.5, i, v)
    first = write_report(tmp_path)["md"].read_text().splitlines()[2]
    assert "does not exceed the spread between seeds" in first


def test_report_on_a_folder_without_jobs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no job folders"):
        write_report(tmp_path)


def test_report_logs_a_summary_run_in_the_sweeps_wandb_group(tmp_path, monkeypatch):
    """Runs logged with logger=wandb: the report adds one run to their group, holding the settings table and the
    plots (read back from the offline files W&B wrote)."""
    from test_wandb import finished_run_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = tmp_path / "2026-01-01_00-00-00"
    for i, (dice, seed, v) in enumerate([(1.0, 0, 0.8), (1.0, 1, 0.82), (0.5, 0, 0.7), (0.5, 1, 0.72)]):
        fake_job(sweep, i, dice, seed, v)
        (sweep / str(i) / ".hydra" / "config.yaml").write_text(
            "optimized_metric: val/miou\noptimized_mode: max\ntask_name: ablate_loss_weights\n"
            "logger:\n  wandb:\n    project: autotimm-test\n    group: null\n")
    paths = write_report(sweep)
    run_dir = paths["wandb"]
    assert run_dir.name.startswith("offline-run-") and run_dir.parent.parent == sweep / "report"
    records = finished_run_records(run_dir)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_group == "ablate_loss_weights/2026-01-01_00-00-00" and run.job_type == "ablation-report"
    history = {it.key or it.nested_key[0] for r in records if r.WhichOneof("record_type") == "history"
               for it in r.history.item}
    assert {"report/settings", "report/loss.dice_weight"} <= history  # the table and the plot
    assert list(run_dir.glob("files/media/images/report/loss.dice_weight_*.png"))
    tables = list(run_dir.glob("files/media/table/report/settings_*.table.json"))
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["loss.dice_weight", "n", "failed"] and len(table["data"]) == 2
    assert sorted(row[0] for row in table["data"]) == [0.5, 1.0]
