"""Ablation presets run as multiruns without -m, and the report gathers every job, failed ones included."""

import csv
import json

import pytest

from autotimm.report import main, write_report


@pytest.mark.slow
def test_ablation_preset_and_report(tmp_path, shapes_root, capsys):
    from test_cli import run

    # ce_weight=0 makes the dice_weight=0 job invalid: it must show up as a failed row, not vanish
    run("train.py", "experiment=ablate_loss_weights", f"paths.log_dir={tmp_path}/outputs",
        f"dataset.data_dir={shapes_root}", "dataset.num_train=24", "dataset.num_val=8", "dataset.source_size=64",
        "dataset.seed=3", "dataset.image_size=64", "dataset.batch_size=8", "dataset.num_workers=0",
        "backbone=test_resnet", "trainer.max_epochs=1", "loss.ce_weight=0")
    sweep = next((tmp_path / "outputs" / "ablate_loss_weights" / "multiruns").iterdir())
    paths = write_report(sweep)
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert [float(r["loss.dice_weight"]) for r in rows] == [0.0, 0.5, 1.0, 2.0]
    assert [r["status"] for r in rows] == ["failed", "completed", "completed", "completed"]
    assert "ce_weight and dice_weight are both 0" in rows[0]["error"]
    for r in rows[1:]:
        assert 0.0 <= float(r["val/miou"]) <= 1.0 and r["val/pixel_acc"]
        assert float(r["val/miou"]) == json.loads((sweep / r["job"] / "metrics.json").read_text())["val/miou"]
        # the cost beside the quality: test_resnet + DeepLabV3+ has 980,997 parameters
        assert int(float(r["model/params_total"])) == 980997
        assert float(r["model/gflops"]) > 0 and float(r["train/img_per_s"]) > 0
    md = paths["md"].read_text()
    assert "4 jobs, 3 completed, 1 failed, 0 incomplete. Optimized metric: `val/miou`." in md
    assert "Fixed overrides:" in md and "`loss.ce_weight=0`" in md
    assert md.count("| completed |") == 3 and "| failed |" in md
    assert "| model/params_total | model/gflops | train/img_per_s |" in md
    png = paths["loss.dice_weight"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    main([str(sweep), "--out", str(tmp_path / "r2")])
    assert "| failed |" in capsys.readouterr().out and (tmp_path / "r2" / "report.csv").is_file()


def test_report_on_a_folder_without_jobs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no job folders"):
        write_report(tmp_path)
