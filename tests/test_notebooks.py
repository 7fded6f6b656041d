"""The notebooks are stored without outputs and run end to end."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_ablation_analysis.ipynb"])
def test_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")


def outputs_text(nb) -> str:
    """Stream text plus the text and markdown of display outputs."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts += [out.get("data", {}).get(k, "") for k in ("text/markdown", "text/plain")]
    return "\n".join(parts)


def execute(name, env):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return nb


@pytest.mark.slow
def test_quickstart_runs():
    nb = execute("01_quickstart.ipynb", {"AUTOTIMM_NOTEBOOK_QUICK": "1"})
    text = outputs_text(nb)
    assert "val/miou" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_ablation_analysis_runs(tmp_path, shapes_root):
    from test_cli import run

    run("train.py", "experiment=ablate_loss_weights", "seeds=2", f"paths.log_dir={tmp_path}/outputs",
        f"dataset.data_dir={shapes_root}", "dataset.num_train=24", "dataset.num_val=8", "dataset.source_size=64",
        "dataset.seed=3", "dataset.image_size=64", "dataset.batch_size=8", "dataset.num_workers=0",
        "backbone=test_resnet", "trainer.max_epochs=1", "loss.ce_weight=0")
    sweep = next((tmp_path / "outputs" / "ablate_loss_weights" / "multiruns").iterdir())
    nb = execute("02_ablation_analysis.ipynb", {"AUTOTIMM_SWEEP_DIR": str(sweep)})
    text = outputs_text(nb)
    assert "8 jobs in 4 settings; swept: ['loss.dice_weight']; failed seeds: 2" in text
    assert "2 failed" in text  # the report, rendered as markdown (dice_weight=0 with ce_weight=0 fails, both seeds)
    assert "Welch's t-test" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
