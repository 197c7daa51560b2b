"""Shared fixtures: small CT-ICH folders built by hand, where the right answer is known."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from ichlib.checkpoint import save_checkpoint
from ichlib.io.nifti import save_mask, save_volume
from ichlib.labels import CT_ICH_COLUMNS, CT_ICH_CSV_COLUMNS, LABELS
from ichlib.model import CNNBiLSTM
from ichlib.preprocess.dataset import PreprocessConfig
from ichlib.training.config import TrainConfig


def write_ct_ich(root: Path, labels: dict[int, np.ndarray], size: int = 32, seed: int = 0,
                 csv_text: str | None = None) -> Path:
    """Write a tiny CT-ICH folder.

    Args:
        root: Destination folder.
        labels: Per patient number, a 0/1 array ``[n_slices, 5]`` for the subtypes in the
            order of ``CT_ICH_COLUMNS`` (intraparenchymal, intraventricular, subarachnoid,
            epidural, subdural). Slice k of the volume gets a bright 70 HU square (and mask)
            when any subtype is set on it, so image, mask and labels agree.
        size: In-plane size.
        seed: Noise seed.
        csv_text: If given, written as the label CSV instead of the generated one.
    """
    rng = np.random.default_rng(seed)
    (root / "ct_scans").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = [",".join(CT_ICH_CSV_COLUMNS)]
    yy, xx = np.mgrid[:size, :size]
    head = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.4 * size) ** 2
    for number, lab in labels.items():
        lab = np.asarray(lab, dtype=int)
        n = lab.shape[0]
        hu = np.full((n, size, size), -1000.0, dtype=np.float32)
        hu[:, head] = 30.0
        hu += rng.normal(0, 3, hu.shape).astype(np.float32)
        mask = np.zeros((n, size, size), dtype=bool)
        for k in range(n):
            if lab[k].any():
                q = size // 4
                mask[k, q:q + 4, q:q + 4] = True
                hu[k][mask[k]] = 70.0
        save_volume(root / "ct_scans" / f"{number:03d}.nii", hu, spacing=(5.0, 0.5, 0.5))
        save_mask(root / "masks" / f"{number:03d}.nii", mask, spacing=(5.0, 0.5, 0.5))
        by_name = dict(zip(CT_ICH_COLUMNS.values(), lab.T))
        for k in range(n):
            sub = {c: int(by_name[c][k]) for c in CT_ICH_COLUMNS.values()}
            no_hem = int(not any(sub.values()))
            rows.append(f"{number},{k + 1},{sub['Intraventricular']},{sub['Intraparenchymal']},"
                        f"{sub['Subarachnoid']},{sub['Epidural']},{sub['Subdural']},{no_hem},0")
    (root / "hemorrhage_diagnosis_raw_ct.csv").write_text(
        csv_text if csv_text is not None else "\n".join(rows) + "\n")
    return root


def labels_with(n_slices: int, subtype: int | None = None, start: int = 2, stop: int = 4) -> np.ndarray:
    """``[n_slices, 5]`` zeros, with subtype column ``subtype`` set on slices start..stop-1."""
    lab = np.zeros((n_slices, 5), dtype=int)
    if subtype is not None:
        lab[start:stop, subtype] = 1
    return lab


@pytest.fixture
def make_ct_ich(tmp_path: Path) -> Callable[..., Path]:
    """Factory fixture: ``make_ct_ich(labels, **kw)`` writes a CT-ICH folder under tmp_path."""
    counter = iter(range(1000))

    def make(labels: dict[int, np.ndarray], **kwargs) -> Path:
        return write_ct_ich(tmp_path / f"ds{next(counter)}", labels, **kwargs)

    return make


@pytest.fixture
def small_ct_ich(make_ct_ich) -> Path:
    """Four patients: 49 negative (6 slices), 50 epidural on slices 3-4 (8 slices),
    51 subdural+IPH (5 slices), 52 negative (3 slices)."""
    lab51 = labels_with(5, 4, 1, 3)
    lab51[2:5, 0] = 1
    return make_ct_ich({
        49: labels_with(6),
        50: labels_with(8, 3, 2, 4),
        51: lab51,
        52: labels_with(3),
    })


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Factory: ``small_fs(size="64k", inodes=None)`` mounts a real, tiny tmpfs under tmp_path.

    Full disks, exhausted inodes and read-only file systems are then real, not mocked.
    Mounting needs root (CI runs as root); elsewhere the test is skipped and says why.
    Every mount is unmounted when the test ends, whatever happened.
    """
    mounted: list[Path] = []

    def make(size: str = "64k", inodes: int | None = None, name: str = "fs") -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root; these fault paths run where the tests "
                        "run as root (CI)")
        target = tmp_path / name
        target.mkdir()
        options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(target)
        return target

    try:
        yield make
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "--lazy", str(target)], capture_output=True)  # busy: open files


def remount_read_only(mount_point: Path) -> None:
    """Make a tmpfs from :func:`small_fs` read-only."""
    subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True, capture_output=True)


def fill_inodes(folder: Path) -> int:
    """Create empty files in ``folder`` until the file system has no free inode; returns how many."""
    n = 0
    while True:
        try:
            (folder / f"inode{n}").touch()
        except OSError:
            return n
        n += 1


@pytest.fixture
def one_thread():
    """Run torch on one thread: tiny models are fastest so, and a busy machine does not thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- toy models and settings shared by several test modules -------------------------------

class ToyOutput(NamedTuple):
    """What a CNN + BiLSTM returns (the fields of :class:`ichlib.model.ModelOutput`)."""

    scan_logits: torch.Tensor
    slice_logits: torch.Tensor


class ToyBiLSTM(nn.Module):
    """The CNNBiLSTM contract in miniature: encoder, target_layer, BiLSTM, two heads.

    Args:
        f: Feature channels (and embedding size).
        hidden: LSTM hidden size per direction.
        downsamplings: Stride-2 blocks; the target layer is the last, so 32x32 slices give
            16x16 maps with 1 and 8x8 with 2.
        batchnorm: A BatchNorm after the first convolution (train/eval mode then matters).
        dropout: Dropout before the heads.
    """

    def __init__(self, f: int = 8, hidden: int = 8, downsamplings: int = 1, batchnorm: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        first = [nn.Conv2d(1, f, 3, padding=1), *([nn.BatchNorm2d(f)] if batchnorm else []), nn.ReLU()]
        blocks = [nn.Sequential(nn.Conv2d(f, f, 3, stride=2, padding=1), nn.ReLU())
                  for _ in range(downsamplings)]
        self.encoder = nn.Sequential(*first, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self._target = len(first) + downsamplings - 1
        self.dropout = nn.Dropout(dropout)
        self.slice_head = nn.Linear(f, 6)
        self.lstm = nn.LSTM(f, hidden, batch_first=True, bidirectional=True)
        self.scan_head = nn.Linear(2 * hidden, 6)

    @property
    def target_layer(self) -> nn.Module:
        return self.encoder[self._target]

    def cam_layer(self, name: str) -> nn.Module:
        """``"layer4"``: the last stride-2 block; ``"layer3"``: the one before (or the first conv)."""
        return {"layer4": self.encoder[self._target], "layer3": self.encoder[max(0, self._target - 1)]}[name]

    def forward_scan(self, slices: torch.Tensor, samplings: np.ndarray) -> ToyOutput:
        """The scan from every slice: each sampling read as a sequence, the largest logit kept."""
        out = self(slices[torch.as_tensor(np.asarray(samplings))])
        return ToyOutput(out.scan_logits.amax(dim=0, keepdim=True),
                         self.slice_head(self.encoder(slices))[None])

    def forward(self, x: torch.Tensor) -> ToyOutput:
        b, s = x.shape[:2]
        e = self.encoder(x.flatten(0, 1)).view(b, s, -1)
        _, (h, _) = self.lstm(e)
        return ToyOutput(self.scan_head(self.dropout(torch.cat([h[-2], h[-1]], 1))),
                         self.slice_head(self.dropout(e)))


def tiny_train_config(data: Path, out: Path, **changes) -> TrainConfig:
    """A TrainConfig small enough for a test: 32 px, S = 4, a 16-unit LSTM, deterministic."""
    settings = {"epochs": 2, "batch_size": 4, "img_size": 32, "seq_len": 4, "lstm_hidden": 16,
                "val_fraction": 0.25, "test_fraction": 0.25, "n_boot": 20, "progress": False,
                "deterministic": True, "cache_dir": str(out.parent / "cache")}
    return TrainConfig(data_dir=str(data), out_dir=str(out), **{**settings, **changes})


def tiny_checkpoint(path: Path, pooling: str = "max", seq_len: int = 4, seed: int = 0,
                    sequence_members: int = 1) -> Path:
    """An untrained ResNet-18 + BiLSTM at 32 px, brain window, thresholds 0.5, marked synthetic:
    outputs that differ from slice to slice, saved in about a second."""
    torch.manual_seed(seed)
    model = CNNBiLSTM(lstm_hidden=8, pooling=pooling, sequence_members=sequence_members).eval()
    return save_checkpoint(path, {"model": model.state_dict(), "model_config": model.model_config,
                                  "preprocess": PreprocessConfig(("brain",), 32, seq_len).to_dict(),
                                  "thresholds": dict.fromkeys(LABELS, 0.5), "data": "synthetic"})


@pytest.fixture(scope="module")
def rsna(tmp_path_factory) -> Path:
    """A synthetic RSNA folder: three patients (four series), 40 px, 8-10 slices."""
    from ichlib.synthetic.rsna import write_synthetic_rsna

    return write_synthetic_rsna(tmp_path_factory.mktemp("rsna") / "data", n_patients=3, size=40,
                                n_slices_range=(8, 10), seed=5, workers=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained checkpoint (:func:`tiny_checkpoint`) for the RSNA submission and scoring tests."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")

