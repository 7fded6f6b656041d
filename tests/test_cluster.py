"""What researchers on shared clusters need: pretrained weights from a file on offline nodes, test metrics computed
on the test split (or said to be on val), sweeps that resume."""

import time

import pytest
import timm
import torch
from timm.models import _hub

from autotimm import FeatureBackboneConfig, InstanceSegmentor, SemanticSegmentor


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    """A test_resnet written by timm itself (save_for_hf: model.safetensors and pytorch_model.bin), and a .pth."""
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(7)
    model = timm.create_model("test_resnet", pretrained=False)
    _hub.save_for_hf(model, str(d), safe_serialization="both")
    torch.save(model.state_dict(), d / "test_resnet.pth")
    return d, model.state_dict()


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin", "test_resnet.pth"])
def test_backbone_weights_from_a_file(timm_weights, name):
    folder, want = timm_weights
    task = SemanticSegmentor(FeatureBackboneConfig("test_resnet", weights=str(folder / name)), num_classes=3)
    got = task.backbone.body.state_dict()
    shared = [k for k in got if k in want]
    assert len(shared) == len(got) > 50 and all(torch.equal(got[k], want[k]) for k in shared)
    # the pretrained config's preprocessing comes with the weights, as with hub weights
    data = timm.data.resolve_model_data_config(timm.create_model("test_resnet", pretrained=False))
    assert task.preprocess["mean"] == pytest.approx(list(data["mean"]))
    assert task.preprocess["std"] == pytest.approx(list(data["std"]))
    # the checkpoint holds the weights: reloading never reads the file again
    assert task.hparams.backbone["weights"] is None and task.hparams.backbone["pretrained"] is False
    inst = InstanceSegmentor(FeatureBackboneConfig("test_resnet", weights=str(folder / name)), num_classes=2,
                             fpn_channels=32, head_num_convs=1)
    assert torch.equal(inst.backbone.body.state_dict()["conv1.0.weight"], want["conv1.0.weight"])


def test_backbone_weights_errors_name_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone.weights: .*missing.safetensors does not exist"):
        FeatureBackboneConfig("test_resnet", weights=str(tmp_path / "missing.safetensors"))
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match=r"backbone.weights: .*w.txt is not a weights file .*'.safetensors'"):
        FeatureBackboneConfig("test_resnet", weights=str(tmp_path / "w.txt"))


def test_hydra_backbone_weights(tmp_path, timm_weights):
    from hydra.utils import instantiate
    from test_configs import compose_cfg

    folder, want = timm_weights
    cfg = compose_cfg(tmp_path, ["backbone=test_resnet", f"backbone.weights={folder / 'model.safetensors'}"])
    model = instantiate(cfg.model)
    assert torch.equal(model.backbone.body.state_dict()["conv1.0.weight"], want["conv1.0.weight"])


def test_offline_pretrained_fails_fast_naming_both_options(monkeypatch):
    """No cached weights and no network: an immediate error naming the weights file and the cache, not the hub's
    retries. Both the offline switch and an unreachable host are caught."""
    for offline in ("1", None):
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        else:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
            monkeypatch.setenv("HF_ENDPOINT", "https://unreachable.invalid")
        start = time.perf_counter()
        with pytest.raises(RuntimeError, match=r"backbone 'test_resnet': pretrained weights are not in the local "
                                               r"cache .*backbone.weights=/path/to/test_resnet.safetensors.*Hugging "
                                               r"Face cache"):
            SemanticSegmentor(FeatureBackboneConfig("test_resnet", pretrained=True), num_classes=3)
        assert time.perf_counter() - start < 10


# ------------------------------------------------------------------------------------------------ the test split
def test_test_stage_uses_a_labelled_test_split_and_says_when_there_is_none(tmp_path, caplog):
    """format=camvid with test/ + testannot/ (and test.txt) on disk: setup("test") gives the test frames; without
    them it falls back to val and says so (in the log, and test_on_val for metrics.json)."""
    import logging
    import shutil

    from PIL import Image
    from test_data_formats import write_camvid

    from autotimm import SegmentationDataModule

    root = write_camvid(tmp_path / "cv")
    (root / "test").mkdir()
    (root / "testannot").mkdir()
    lines = []
    for i in range(3):
        pixels = torch.randint(0, 255, (24, 32, 3), dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "test" / f"t{i}.png")
        labels = torch.randint(0, 11, (24, 32), dtype=torch.uint8).numpy()
        Image.fromarray(labels).save(root / "testannot" / f"t{i}.png")
        lines.append(f"/SegNet/CamVid/test/t{i}.png /SegNet/CamVid/testannot/t{i}.png")
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    dm = SegmentationDataModule(root, format="camvid", image_size=32, batch_size=2, num_workers=0, num_classes=11)
    dm.setup("test")
    assert [s.image_id for s in dm.test_dataset.samples] == ["t0", "t1", "t2"]
    assert (dm.test_split_used, dm.test_on_val) == ("test", False)
    for p in ("test", "testannot"):
        shutil.rmtree(root / p)
    (root / "test.txt").unlink()
    dm = SegmentationDataModule(root, format="camvid", image_size=32, batch_size=2, num_workers=0, num_classes=11)
    with caplog.at_level(logging.WARNING):
        dm.setup("test")
    assert [s.image_id for s in dm.test_dataset.samples] == ["f0", "f1"]  # val's frames
    assert (dm.test_split_used, dm.test_on_val) == ("val", True)
    assert "no labelled test split" in caplog.text and "computed on the 'val' split" in caplog.text
    explicit = SegmentationDataModule(root, format="camvid", image_size=32, batch_size=2, num_workers=0,
                                      num_classes=11, test_split="val")
    explicit.setup("test")
    assert (explicit.test_split_used, explicit.test_on_val) == ("val", False)  # asked for: nothing to warn about


def test_cityscapes_test_split_is_refused_not_scored(tmp_path):
    from autotimm.data.formats import DatasetLayoutError, cityscapes

    with pytest.raises(DatasetLayoutError, match="test split's labels are not public"):
        cityscapes.load_split(tmp_path, "test")


def test_instance_test_stage_uses_the_coco_test_split(tmp_path, shapes_root):
    """COCO layout with a test split (annotations/instances_test.json): the instance data module tests on it; the
    generated shapes have none and test on val, saying so."""
    import shutil

    from autotimm import InstanceSegmentationDataModule

    root = tmp_path / "coco"
    shutil.copytree(shapes_root, root)
    shutil.copytree(root / "val", root / "test")
    shutil.copy(root / "annotations" / "instances_val.json", root / "annotations" / "instances_test.json")
    dm = InstanceSegmentationDataModule(root, image_size=64, batch_size=2, num_workers=0)
    dm.setup("test")
    assert (dm.test_split_used, dm.test_on_val) == ("test", False)
    assert dm.test_dataset.split.extra["img_dir"] == root / "test"
    dm = InstanceSegmentationDataModule(shapes_root, image_size=64, batch_size=2, num_workers=0)
    dm.setup("test")
    assert (dm.test_split_used, dm.test_on_val) == ("val", True)


# ------------------------------------------------------------------------------------------------ resume a sweep
def tiny_sweep_args(shapes_root, task_name: str) -> list[str]:
    """Three 3-step epochs of test_resnet on 24 shapes, validated and checkpointed every epoch."""
    return [f"dataset.data_dir={shapes_root}", "dataset.num_train=24", "dataset.num_val=8", "dataset.source_size=64",
            "dataset.seed=3", "dataset.image_size=64", "dataset.batch_size=8", "dataset.num_workers=0",
            "backbone=test_resnet", "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=1",
            f"task_name={task_name}"]


def run_until_killed(args: list[str], sweep, jobs: tuple[str, ...]) -> str | None:
    """``python train.py *args`` into ``sweep``, SIGKILLed (its whole process group) as soon as one of ``jobs`` is
    between epochs (its last.ckpt written, no metrics.json yet); that job, or None if the sweep ended first."""
    import os
    import signal
    import subprocess
    import sys

    from test_cli import ROOT

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    interrupted = None
    deadline = time.time() + 600
    while interrupted is None and time.time() < deadline and proc.poll() is None:
        for job in jobs:
            d = sweep / job
            if (d / "checkpoints" / "last.ckpt").is_file() and not (d / "metrics.json").is_file():
                os.killpg(proc.pid, signal.SIGKILL)
                interrupted = job
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    return interrupted


@pytest.mark.slow
def test_a_killed_sweep_resumes(tmp_path, shapes_root):
    """A real 4-job sweep SIGKILLed while a job is between epochs (its last.ckpt written, no metrics.json):
    re-running the same command with hydra.sweep.dir and resume=true skips the completed jobs (their files
    untouched), continues the interrupted one from its checkpoint (3 epochs in all, not more), trains the rest, and
    the report has the settings and counts of an uninterrupted sweep."""
    import csv
    import json

    from test_cli import run

    from autotimm.report import write_report

    args = ["-m", "loss.dice_weight=0.0,0.5,1.0,2.0", *tiny_sweep_args(shapes_root, "sweep")]
    sweep = tmp_path / "killed"
    interrupted = run_until_killed(args, sweep, ("1", "2", "3"))
    assert interrupted is not None, "the sweep ended before it could be killed mid-job"
    done = {j: (sweep / j / "metrics.json").read_bytes() for j in "0123" if (sweep / j / "metrics.json").is_file()}
    assert "0" in done and interrupted not in done

    run("train.py", *args, f"hydra.sweep.dir={sweep}", "resume=true")
    for job in "0123":
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "completed", job
        assert metrics["global_step"] == 3 * 3  # 3 epochs of 3 steps, whether trained at once or in two goes
    for job, before in done.items():
        assert (sweep / job / "metrics.json").read_bytes() == before  # completed: not trained again
    logs = {job: (sweep / job / "sweep.log").read_text() for job in "0123"}
    for job in done:
        assert "already completed: skipped" in logs[job]
    assert "was interrupted: training continues from" in logs[interrupted]
    def val_epochs(name):
        return {int(r["epoch"]) for r in csv.DictReader(open(sweep / interrupted / "csv" / name)) if r.get("val/miou")}

    before, after = val_epochs("metrics.part0.csv"), val_epochs("metrics.csv")  # the interrupted part kept
    assert before and not before & after and before | after == {0, 1, 2}

    run("train.py", *args, f"hydra.sweep.dir={tmp_path / 'whole'}")
    a, b = write_report(sweep), write_report(tmp_path / "whole")
    rows_a = [(r["loss.dice_weight"], r["n"], r["failed"]) for r in csv.DictReader(open(a["csv"]))]
    rows_b = [(r["loss.dice_weight"], r["n"], r["failed"]) for r in csv.DictReader(open(b["csv"]))]
    assert rows_a == rows_b and len(rows_a) == 4


def test_resume_refuses_a_folder_of_another_sweep(tmp_path):
    """A job folder recorded with other overrides is not this job: a clear error, not a silent skip."""
    import json

    from test_configs import compose_cfg

    from autotimm.cli.train import JOB_RECORD, resume_plan

    cfg = compose_cfg(tmp_path, ["resume=true"])
    (tmp_path / JOB_RECORD).write_text(json.dumps({"overrides": ["loss.dice_weight=9.0"]}))
    with pytest.raises(ValueError, match=r"resume: .* holds a job with overrides \['loss.dice_weight=9.0'\], not "
                                         r"this job's"):
        resume_plan(cfg)
    (tmp_path / JOB_RECORD).write_text(json.dumps({"overrides": []}))
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "failed"}))
    assert resume_plan(cfg)[0] == "skip"  # failed jobs run again only with resume_failed=true
    cfg.resume_failed = True
    assert resume_plan(cfg) == ("train", None)


@pytest.mark.slow
def test_a_killed_optuna_search_resumes(tmp_path, shapes_root):
    """An Optuna search (3 trials, study in sqlite) SIGKILLed while trial 1 is between epochs: re-running the same
    command with hydra.sweep.dir and resume=true leaves trial 0 alone, continues trial 1 with its own parameters from
    its last.ckpt in its folder, runs trial 2, and the study ends with exactly 3 complete trials, one per folder."""
    import json

    import optuna
    from test_cli import run

    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["hparams_search=optuna_semantic", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=3",
            f"hydra.sweeper.storage={db}", *tiny_sweep_args(shapes_root, "search")]
    sweep = tmp_path / "search"
    killed = run_until_killed(args, sweep, ("1",)) == "1"
    assert killed, "the search ended before trial 1 could be killed mid-job"
    study = optuna.load_study(study_name="search", storage=db)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "RUNNING"]
    params_1 = study.get_trials()[1].params
    first = (sweep / "0" / "metrics.json").read_bytes()

    run("train.py", *args, f"hydra.sweep.dir={sweep}", "resume=true")
    trials = optuna.load_study(study_name="search", storage=db).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3  # no trial asked twice, none left running
    assert trials[1].params == params_1
    assert (sweep / "0" / "metrics.json").read_bytes() == first  # not trained again
    for t in trials:
        metrics = json.loads((sweep / str(t.number) / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["global_step"] == 3 * 3
        assert t.value == pytest.approx(metrics["val/miou"])
        job = json.loads((sweep / str(t.number) / "job.json").read_text())["overrides"]
        assert f"loss.dice_weight={t.params['loss.dice_weight']}" in job
    assert "was interrupted: training continues from" in (sweep / "1" / "search.log").read_text()
    assert not (sweep / "3").exists()


def test_resuming_an_optuna_search_needs_its_storage():
    """Without a storage the study lived in memory: resume=true says so instead of starting a new search."""
    from autotimm.hparams_search import ResumableOptunaImpl

    impl = ResumableOptunaImpl(None, "maximize", None, "search", 3, 1, 0.0, None, None, None)
    with pytest.raises(ValueError, match=r"resume=true with the Optuna sweeper needs the study's storage"):
        impl._resume_study()
