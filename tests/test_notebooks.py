"""Every numbered notebook runs headless with papermill, in smoke mode, on a tiny phantom."""

from __future__ import annotations

from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill", reason="papermill is part of the dev extra")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# `papermill -p WINDOWS brain,subdural` (as in `make run NB04_PARAMS=...`) passes a string, not a list.
EXTRA = {"03": {"WINDOWS": "brain,subdural"}, "04": {"WINDOWS": "brain,subdural"}}


@pytest.fixture(scope="module")
def tiny_phantom(tmp_path_factory) -> Path:
    from ichlib.synthetic.writer import write_synthetic_ct_ich

    return write_synthetic_ct_ich(tmp_path_factory.mktemp("phantom"), n_patients=12, size=96, seed=1)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    # shared across notebooks so 05 can use the checkpoint that 04 wrote
    return tmp_path_factory.mktemp("runs")


def test_notebooks_exist():
    names = [p.name[:2] for p in NOTEBOOKS]
    assert names == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_its_figures(notebook, tiny_phantom, runs_dir, tmp_path, monkeypatch):
    """Executed as make run executes it (inline backend, no MPLBACKEND=Agg): every saved figure
    is also in the notebook as an image, and no cell echoes a file path."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    figures = tmp_path / "figures"
    data = {} if notebook.name.startswith("06") else {"DATA_DIR": str(tiny_phantom)}
    executed = papermill.execute_notebook(
        str(notebook), str(tmp_path / notebook.name), kernel_name="python3", progress_bar=False,
        parameters={**data, "FIGURES_DIR": str(figures), "RUNS_DIR": str(runs_dir), "SMOKE": True,
                    **EXTRA.get(notebook.name[:2], {})},
        cwd=str(tmp_path),
    )
    saved = sorted(p.name for p in figures.glob(f"{notebook.name[:2]}_*.png"))
    assert saved, f"{notebook.name} saved no figure under FIGURES_DIR"
    assert all((figures / name).stat().st_size > 5000 for name in saved)
    outputs = [o for cell in executed["cells"] for o in cell.get("outputs", [])]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= len(saved), f"{notebook.name}: {images} inline images for {len(saved)} saved figures"
    echoes = [o["data"]["text/plain"] for o in outputs if "PosixPath(" in str(o.get("data", {}).get("text/plain", ""))]
    assert not echoes, f"{notebook.name} echoes paths: {echoes}"
    if notebook.name.startswith("04"):
        from ichlib.checkpoint import load_checkpoint

        ckpt = load_checkpoint(runs_dir / "04_training" / "main" / "best.pt")
        assert ckpt["preprocess"]["windows"] == ["brain", "subdural"]
