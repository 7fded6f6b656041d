"""LoggingConfig values are logged; AutoTrainer's defaults; auto precision."""

import logging
import os
import subprocess
import sys

import pytest
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

from autotimm import AutoTrainer, FeatureBackboneConfig, LoggingConfig, SemanticSegmentor
from autotimm.training import EpochSummary, ProgressLog
from autotimm.training.trainer import auto_precision


def test_logging_config_logs_lr_grad_and_weight_norms():
    model = SemanticSegmentor(FeatureBackboneConfig("test_resnet", pretrained=False), num_classes=2,
                              logging_config=LoggingConfig(log_learning_rate=True, log_gradient_norm=True,
                                                           log_weight_norm=True))
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.on_before_optimizer_step(opt)
    n = sum(p.numel() for p in model.parameters())
    assert logged["train/lr"] == 0.5
    assert logged["train/grad_norm"] == pytest.approx(n**0.5, rel=1e-5)
    w = torch.cat([p.detach().flatten() for p in model.parameters()]).norm().item()
    assert logged["train/weight_norm"] == pytest.approx(w, rel=1e-4)  # float32 summation order


def test_auto_trainer_default_callbacks(tmp_path):
    t = AutoTrainer(default_root_dir=str(tmp_path), checkpoint_monitor="val/miou", checkpoint_mode="max")
    kinds = {type(c) for c in t.callbacks}
    assert {ModelCheckpoint, RichProgressBar, EpochSummary, ProgressLog} <= kinds
    assert LearningRateMonitor not in kinds  # one learning-rate logger: the task's train/lr
    ck = t.checkpoint_callback
    assert ck.monitor == "val/miou" and ck.mode == "max" and ck.save_last
    mine = ModelCheckpoint(monitor="val/loss")
    t = AutoTrainer(callbacks=[mine], logger=False, enable_progress_bar=False)
    assert t.checkpoint_callback is mine
    assert not any(isinstance(c, (RichProgressBar, LearningRateMonitor)) for c in t.callbacks)
    t = AutoTrainer(default_callbacks=False, logger=False)  # Hydra's path: callbacks come from conf/callbacks/
    assert not any(isinstance(c, EpochSummary) for c in t.callbacks)
    assert t.checkpoint_callback.monitor is None  # only Lightning's own default, not AutoTrainer's best/last
    with pytest.raises(ValueError, match="checkpoint_mode"):
        AutoTrainer(checkpoint_mode="best")


def test_auto_precision_is_bf16_only_where_supported():
    p = auto_precision("cpu")
    assert p == ("bf16-mixed" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "32-true")
    t = AutoTrainer(precision="auto", accelerator="cpu", logger=False, enable_checkpointing=False)
    assert t.precision == p


AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="needs an x86 CPU")
def test_auto_precision_on_an_avx2_only_cpu_is_fp32_and_says_why():
    """What a user's AVX2-only CPU gets, emulated on any x86 CPU by capping torch's, oneDNN's and MKL's instruction
    sets (the README's recipe for measuring AVX2 times on an AVX-512 machine): fp32, with the reason naming AVX2."""
    code = ("import torch; from autotimm.training.trainer import auto_precision; why = []; "
            "print(auto_precision('cpu', why)); print(torch.backends.cpu.get_cpu_capability()); print(why[0])")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **AVX2_ONLY}, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[:2] == ["32-true", "AVX2"]
    assert out[2].startswith("CPU (AVX2) has no native bf16")
def test_epoch_summary_line(caplog):
    class T:
        sanity_checking, is_global_zero, current_epoch, global_step = False, True, 2, 30
        callback_metrics = {"val/miou": torch.tensor(0.5), "val/loss": torch.tensor(0.25),
                            "train/loss_step": torch.tensor(9.0)}

    cb = EpochSummary()
    with caplog.at_level(logging.INFO, logger="autotimm"):
        cb.on_validation_end(T(), None)
    assert "epoch 2 | step 30" in caplog.text and "val/loss 0.2500 | val/miou 0.5000" in caplog.text
    assert "loss_step" not in caplog.text


def test_progress_log_lines_without_a_terminal(caplog, monkeypatch):
    """A line after the first step, then one per every_s seconds of training: epoch/epochs, step/total with the
    percentage, images per second since the last line, the loss, elapsed time and ETA."""
    from autotimm.training import callbacks

    clock = iter([0.0, 10.0, 30.0, 70.0, 75.0, 140.0])
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))

    class T:
        is_global_zero, current_epoch, max_epochs, estimated_stepping_batches = True, 0, 4, 40
        callback_metrics = {"train/loss_step": torch.tensor(0.5)}
        global_step = 0

    cb, t = ProgressLog(every_s=60), T()
    batch = {"image": torch.zeros(8, 3, 4, 4)}
    with caplog.at_level(logging.INFO, logger="autotimm"):
        cb.on_train_start(t, None)  # t = 0
        for step, t.current_epoch in ((1, 0), (2, 0), (3, 1), (4, 1), (5, 1)):  # t = 10, 30, 70, 75, 140
            t.global_step = step
            cb.on_train_batch_end(t, None, None, batch, step)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch")]
    assert lines == [
        "epoch 1/4 | step 1/40 (2%) | 0.80 img/s | loss 0.5000 | elapsed 0:10 | ETA 6:30",  # the first step
        "epoch 2/4 | step 3/40 (8%) | 0.27 img/s | loss 0.5000 | elapsed 1:10 | ETA 14:23",  # 16 img in 60 s
        "epoch 2/4 | step 5/40 (12%) | 0.23 img/s | loss 0.5000 | elapsed 2:20 | ETA 16:20"]


def test_last_epoch_always_validates(tmp_path):
    """Validation every 2 epochs over 3 (or 1) epochs: Lightning validates after epoch 2 only (or never);
    AutoTrainer also after the last one."""
    import pytorch_lightning as pl

    from autotimm import AutoTrainer

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)
            self.val_epochs = []

        def training_step(self, batch, i):
            return self.w(batch[0]).pow(2).mean()

        def validation_step(self, batch, i):
            self.log("val/loss", self.w(batch[0]).pow(2).mean())

        def on_validation_epoch_end(self):
            self.val_epochs.append(self.current_epoch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    for epochs, want in ((3, [1, 2]), (1, [0]), (4, [1, 3])):
        model = Tiny()
        trainer = AutoTrainer(max_epochs=epochs, check_val_every_n_epoch=2, default_root_dir=str(tmp_path),
                              accelerator="cpu", logger=False, enable_progress_bar=False, num_sanity_val_steps=0)
        trainer.fit(model, loader, loader)
        assert model.val_epochs == want, epochs
        assert trainer.check_val_every_n_epoch == 2
