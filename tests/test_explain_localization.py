"""Localisation metrics on hand-built maps, the two baselines, and the randomisation check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from ichlib.errors import ConfigError
from ichlib.explain.cam import scan_grad_cam
from ichlib.explain.localization import (
    METHOD_INTENSITY,
    METHOD_RANDOMIZED,
    METHOD_TRAINED,
    RECORD_COLUMNS,
    cascading_randomization,
    collect_localization,
    energy_in_mask,
    intensity_baseline,
    localization_records,
    localization_table,
    pointing_game,
    randomization_stages,
    scan_energy_in_mask,
    scan_pointing_game,
)
from ichlib.labels import LABELS
from ichlib.preprocess.dataset import PreprocessConfig
from ichlib.preprocess.windowing import multi_window
from tests.conftest import ToyBiLSTM

pytestmark = pytest.mark.usefixtures("one_thread")


def box(shape=(16, 16), r0=4, r1=8, c0=4, c1=8) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


# --- energy in mask ---------------------------------------------------------------------

def test_energy_in_mask_known_answers():
    mask = box()
    cam = np.zeros((16, 16))
    cam[5, 5] = 3.0          # inside
    cam[12, 12] = 1.0        # outside
    assert energy_in_mask(cam, mask) == pytest.approx(0.75)
    assert energy_in_mask(cam * 7, mask) == pytest.approx(0.75)     # scale-free
    assert energy_in_mask(np.ones((16, 16)), mask) == pytest.approx(16 / 256)
    assert energy_in_mask(np.zeros((16, 16)), mask) == 0.0         # a map pointing nowhere
    assert np.isnan(energy_in_mask(cam, np.zeros((16, 16), bool)))  # nothing to find


def test_energy_per_slice_and_per_scan():
    mask = np.stack([box(), np.zeros((16, 16), bool), box()])
    cam = np.zeros((3, 16, 16))
    cam[0, 5, 5], cam[0, 0, 0] = 1.0, 1.0          # slice 0: half inside
    cam[1] = 5.0                                    # slice 1: no blood, not scored
    cam[2, 6, 6] = 2.0                              # slice 2: all inside
    np.testing.assert_allclose(energy_in_mask(cam, mask), [0.5, np.nan, 1.0])
    # scan: mass inside / mass on the positive slices = (1 + 2) / (2 + 2)
    assert scan_energy_in_mask(cam, mask) == pytest.approx(0.75)
    assert np.isnan(scan_energy_in_mask(cam, np.zeros_like(mask)))
    assert scan_energy_in_mask(np.zeros((3, 16, 16)), mask) == 0.0


def test_metrics_reject_bad_input():
    with pytest.raises(ConfigError):
        energy_in_mask(np.zeros((4, 4)), np.zeros((4, 5), bool))
    with pytest.raises(ConfigError):
        pointing_game(np.full((4, 4), np.nan), np.ones((4, 4), bool))
    with pytest.raises(ConfigError):
        pointing_game(np.zeros((4, 4)), np.ones((4, 4), bool), tolerance_px=-1)


# --- pointing game ----------------------------------------------------------------------

def test_pointing_game_with_tolerance():
    mask = box(r0=4, r1=8, c0=4, c1=8)              # rows/cols 4..7
    cam = np.zeros((16, 16))
    cam[6, 6] = 1.0
    assert pointing_game(cam, mask, tolerance_px=0) == 1.0
    cam = np.zeros((16, 16))
    cam[6, 10] = 1.0                                # 3 px right of column 7
    assert pointing_game(cam, mask, tolerance_px=2) == 0.0
    assert pointing_game(cam, mask, tolerance_px=3) == 1.0
    cam = np.zeros((16, 16))
    cam[10, 10] = 1.0                               # diagonal: sqrt(3^2 + 3^2) = 4.24 px
    assert pointing_game(cam, mask, tolerance_px=4) == 0.0
    assert pointing_game(cam, mask, tolerance_px=4.3) == 1.0


def test_pointing_game_ties_empty_maps_and_empty_masks():
    mask = box()
    flat = np.ones((16, 16))
    assert pointing_game(flat, mask, tolerance_px=0) == 0.0         # a flat map cannot score
    assert pointing_game(np.zeros((16, 16)), mask, tolerance_px=0) == 0.0
    assert pointing_game(flat, np.ones((16, 16), bool), tolerance_px=0) == 1.0
    two = np.zeros((16, 16))
    two[5, 5] = two[14, 14] = 1.0                                   # one tie outside: miss
    assert pointing_game(two, mask, tolerance_px=0) == 0.0
    two[14, 14] = 0.999
    assert pointing_game(two, mask, tolerance_px=0) == 1.0
    assert np.isnan(pointing_game(two, np.zeros((16, 16), bool)))
    stack = pointing_game(np.stack([two, two]), np.stack([mask, np.zeros_like(mask)]), 0)
    np.testing.assert_array_equal(stack, [1.0, np.nan])


def test_scan_pointing_game_uses_the_scan_wide_maximum():
    mask = np.stack([box(), np.zeros((16, 16), bool)])
    cam = np.zeros((2, 16, 16))
    cam[0, 5, 5] = 0.5                               # right place on the bleeding slice...
    cam[1, 5, 5] = 1.0                               # ...but brighter on a slice without blood
    assert pointing_game(cam, mask, 0)[0] == 1.0
    assert scan_pointing_game(cam, mask, 0) == 0.0
    cam[0, 5, 5] = 2.0
    assert scan_pointing_game(cam, mask, 0) == 1.0
    assert np.isnan(scan_pointing_game(cam, np.zeros_like(mask)))


# --- intensity baseline -----------------------------------------------------------------

def phantom_hu(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Brain (30 HU) in air, a skull ring (1000 HU), and a 70 HU bleed on slice 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    r = np.hypot(yy - 16, xx - 16)
    hu = np.full((3, 32, 32), -1000.0)
    hu[:, r < 14] = 1000.0
    hu[:, r < 12] = 30.0
    hu += rng.normal(0, 3, hu.shape)
    mask = np.zeros((3, 32, 32), bool)
    mask[1, 8:13, 14:19] = True
    hu[mask] = 70.0
    return hu.astype(np.float32), mask


def test_intensity_baseline_finds_the_blood_range():
    hu, mask = phantom_hu()
    base = intensity_baseline(hu, sigma_px=1.0)
    assert base.shape == hu.shape and base.dtype == np.float32
    assert base.max() == pytest.approx(1.0) and base.min() >= 0
    assert pointing_game(base[1], mask[1], tolerance_px=0) == 1.0
    assert energy_in_mask(base[1], mask[1]) > 0.5
    assert base[0].max() < 0.05                     # no blood, no bone, no brain in range


def test_intensity_baseline_from_windowed_input():
    hu, _ = phantom_hu()
    from_hu = intensity_baseline(hu)
    x = multi_window(hu, ["brain", "subdural"])
    np.testing.assert_allclose(intensity_baseline(x, ["brain", "subdural"]), from_hu, atol=1e-5)
    with pytest.raises(ConfigError, match="pass HU"):
        intensity_baseline(x[:, :1], ["brain"])     # 0..80 HU clips blood together with bone
    with pytest.raises(ConfigError):
        intensity_baseline(x)                       # windowed but no windows given
    assert not intensity_baseline(np.full((2, 8, 8), -1000.0)).any()


# --- cascading randomisation ------------------------------------------------------------

def test_randomization_stages_of_the_real_model():
    from ichlib.model import CNNBiLSTM

    stages = randomization_stages(CNNBiLSTM("resnet18", lstm_hidden=8))
    # top down: the scan head, the LSTM and the LayerNorm that feeds it, the slice head, then the CNN
    assert stages[:4] == ["scan_head", "lstm", "lstm_norm", "slice_head"]
    assert stages[4:8] == ["encoder.layer4.1", "encoder.layer4.0", "encoder.layer3.1",
                           "encoder.layer3.0"]
    assert stages[-2:] == ["encoder.bn1", "encoder.conv1"]
    assert len(stages) == 4 + 8 + 2


def test_cascading_randomization_goes_top_down_and_leaves_the_original():
    torch.manual_seed(0)
    model = ToyBiLSTM(downsamplings=2).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    stages = randomization_stages(model)
    assert stages == ["scan_head", "lstm", "slice_head", "encoder.3.0", "encoder.2.0", "encoder.0"]

    def changed(m: nn.Module) -> set[str]:
        sd = m.state_dict()
        return {k.rsplit(".", 1)[0] for k in sd if not torch.equal(sd[k], original[k])}

    assert changed(cascading_randomization(model, 0)) == set()
    assert changed(cascading_randomization(model, 1)) == {"scan_head"}
    assert changed(cascading_randomization(model, "lstm")) == {"scan_head", "lstm"}
    every = cascading_randomization(model, "all")
    assert changed(every) == {"scan_head", "lstm", "slice_head", "encoder.3.0", "encoder.2.0",
                              "encoder.0"}
    assert not every.training                                        # mode kept
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    again = cascading_randomization(model, "all")                    # seeded: reproducible
    assert all(torch.equal(a, b) for a, b in zip(every.parameters(), again.parameters()))
    state = torch.random.get_rng_state()
    cascading_randomization(model, "all", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)          # global RNG untouched
    with pytest.raises(ConfigError):
        cascading_randomization(model, "decoder")
    with pytest.raises(ConfigError):
        cascading_randomization(model, 7)


def blob_scans(rng: np.random.Generator, n: int, s: int = 4, size: int = 32):
    """Noisy slices; every other scan has a bright 6x6 blob on one or two slices (label 'any')."""
    x = rng.normal(0.3, 0.05, (n, s, 1, size, size)).astype(np.float32)
    masks = np.zeros((n, s, size, size), bool)
    y = np.zeros((n, s, 6), np.float32)
    for i in range(0, n, 2):
        for k in rng.choice(s, size=rng.integers(1, 3), replace=False):
            r, c = rng.integers(2, size - 8, 2)
            masks[i, k, r:r + 6, c:c + 6] = True
            x[i, k, 0][masks[i, k]] = 0.9
            y[i, k, 0] = 1.0
    return torch.from_numpy(x), masks, torch.from_numpy(y)


@pytest.fixture(scope="module")
def trained_toy() -> nn.Module:
    """A ToyBiLSTM trained (150 Adam steps, ~3 s) to tell scans with a blob from those without."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    model = ToyBiLSTM(downsamplings=2)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    bce = nn.functional.binary_cross_entropy_with_logits
    for _ in range(150):
        x, _, y = blob_scans(rng, 16)
        out = model(x)
        loss = bce(out.scan_logits[:, 0], y[:, :, 0].amax(1)) + bce(out.slice_logits[..., 0], y[..., 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(before)
    return model.eval()


def test_randomizing_the_weights_changes_the_maps(trained_toy):
    x, masks, y = blob_scans(np.random.default_rng(100), 16)
    with torch.no_grad():
        p = torch.sigmoid(trained_toy(x).scan_logits[:, 0])
    assert ((p > 0.5) == (y[:, :, 0].amax(1) > 0)).float().mean() >= 0.9   # it learned the task
    randomized = cascading_randomization(trained_toy, "all", seed=1)
    rho, energy_trained, energy_random = [], [], []
    for i in range(0, 16, 2):
        a = scan_grad_cam(trained_toy, x[i], "any").maps
        b = scan_grad_cam(randomized, x[i], "any").maps
        rho.append(spearmanr(a.ravel(), b.ravel())[0])
        energy_trained.append(scan_energy_in_mask(a, masks[i]))
        energy_random.append(scan_energy_in_mask(b, masks[i]))
    # the trained maps sit on the blobs; the randomised model's do not, and rank pixels otherwise
    assert np.nanmean(rho) < 0.5, rho
    assert np.mean(energy_trained) > 0.2
    assert np.mean(energy_trained) > 2 * np.mean(energy_random)


# --- records and the table --------------------------------------------------------------

def scan_labels(n: int, subtypes: dict[int, list[str]]) -> np.ndarray:
    lab = np.zeros((n, len(LABELS)), np.float32)
    for k, names in subtypes.items():
        for name in names:
            lab[k, LABELS.index(name)] = 1
        lab[k, 0] = 1.0 if names else 0.0
    return lab


def test_localization_table_on_hand_built_maps():
    mask = np.stack([np.zeros((16, 16), bool), box(), box()])
    labels = scan_labels(3, {1: ["epidural"], 2: ["epidural", "subdural"]})
    good = np.zeros((3, 16, 16))
    good[1, 5, 5] = good[2, 6, 6] = 1.0                      # all inside, hits
    bad = np.zeros((3, 16, 16))
    bad[1, 15, 15] = bad[2, 15, 0] = 1.0                     # all outside, misses
    half = good.copy()
    half[0, 5, 5] = 2.0                                      # brightest on the slice without blood
    records = [
        localization_records("good", "a", good, mask, labels, target="any", tolerance_px=0),
        localization_records("bad", "a", bad, mask, labels, target="any", tolerance_px=0),
        localization_records("half", "a", half, mask, labels, target="any", tolerance_px=0),
        localization_records("good", "b", np.zeros((3, 16, 16)), np.zeros((3, 16, 16), bool),
                             target="any"),            # no blood: not a positive scan
    ]
    assert list(records[0].columns) == list(RECORD_COLUMNS)
    assert list(records[0]["subtype"]) == ["", "epidural", ""]   # slice 2 has two subtypes
    table = localization_table(records)
    assert list(table.index) == ["good", "bad", "half"]
    assert table.loc["good", "n_scans"] == 1
    assert table.loc["good", ["energy", "pointing", "pointing_scan"]].tolist() == [1.0, 1.0, 1.0]
    assert table.loc["bad", ["energy", "pointing", "pointing_scan"]].tolist() == [0.0, 0.0, 0.0]
    assert table.loc["half", ["energy", "pointing", "pointing_scan"]].tolist() == [1.0, 1.0, 0.0]
    assert table.loc["good", "energy[epidural]"] == 1.0
    assert table.loc["good", "n_slices[epidural]"] == 1
    assert np.isnan(table.loc["good", "energy[subdural]"])
    assert table.loc["good", "n_slices[subdural]"] == 0


def test_table_of_no_records_has_the_columns_and_no_rows():
    import pandas as pd

    table = localization_table(pd.DataFrame(columns=list(RECORD_COLUMNS)))
    assert len(table) == 0
    assert list(table.columns) == ["n_scans", "energy", "pointing", "pointing_scan"]
    assert table.index.name == "method"


def test_table_prefers_subtype_targets_and_uses_label_free_baselines():
    mask = np.stack([box(), box()])
    labels = scan_labels(2, {0: ["subdural"], 1: ["subdural"]})
    inside = np.zeros((2, 16, 16))
    inside[:, 5, 5] = 1.0
    outside = np.zeros((2, 16, 16))
    outside[:, 15, 15] = 1.0
    records = [
        localization_records("model", "a", outside, mask, labels, target="any"),
        localization_records("model", "a", inside, mask, labels, target="subdural"),
        localization_records("baseline", "a", inside, mask, labels),       # target ""
    ]
    table = localization_table(records)
    assert table.loc["model", "energy"] == 0.0            # the 'any' maps
    assert table.loc["model", "energy[subdural]"] == 1.0  # the subdural maps
    assert table.loc["baseline", "energy"] == 1.0
    assert table.loc["baseline", "energy[subdural]"] == 1.0
    assert len(localization_table(records[0].iloc[:0])) == 0


def test_collect_localization_on_a_small_ct_ich_folder(small_ct_ich, trained_toy):
    from ichlib.io.ctich import read_ct_ich

    data = read_ct_ich(small_ct_ich)
    config = PreprocessConfig(windows=("brain",), img_size=32, seq_len=5)
    records = collect_localization(trained_toy, data, data.patient_ids, config, tolerance_px=2)
    assert set(records["method"]) == {METHOD_TRAINED, METHOD_RANDOMIZED, METHOD_INTENSITY}
    assert set(records["scan_id"]) == {"050", "051"}              # the scans with blood
    assert set(records.loc[records["method"] == METHOD_TRAINED, "target"]) == {
        "any", "epidural", "subdural", "intraparenchymal"}
    table = localization_table(records)
    assert list(table.index) == [METHOD_TRAINED, METHOD_RANDOMIZED, METHOD_INTENSITY]
    assert (table["n_scans"] == 2).all()
    # the fixture's bleeds are 70 HU squares in 30 HU brain: the intensity map finds them
    assert table.loc[METHOD_INTENSITY, "pointing"] == 1.0
    # (sigma = 2 px smoothing keeps about 0.6 x 0.6 of a 4x4 square's mass inside it)
    assert table.loc[METHOD_INTENSITY, "energy"] > 0.3
    assert table.loc[METHOD_INTENSITY, "energy"] > table.loc[METHOD_RANDOMIZED, "energy"]

