"""Grad-CAM against the masks on a small CT-ICH folder: the records, the table, the baselines,
the CAM comparison on validation, and a trained toy's maps against a randomised copy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from ichlib.explain.cam import scan_grad_cam
from ichlib.explain.localization import (
    METHOD_CHANCE,
    METHOD_INTENSITY,
    METHOD_RANDOMIZED,
    CamSpec,
    collect_localization,
    compare_cams,
    localization_table,
    localization_verdict,
)
from ichlib.explain.randomization import cascading_randomization
from ichlib.explain.scores import energy_in_mask
from ichlib.io.ctich import read_ct_ich
from ichlib.preprocess.dataset import PreprocessConfig
from tests.conftest import ToyBiLSTM

pytestmark = pytest.mark.usefixtures("one_thread")


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
        energy_trained.append(np.nanmean(energy_in_mask(a, masks[i])))
        energy_random.append(np.nanmean(energy_in_mask(b, masks[i])))
    # the trained maps sit on the blobs; the randomised model's do not, and rank pixels otherwise
    assert np.nanmean(rho) < 0.5, rho
    assert np.mean(energy_trained) > 0.2
    assert np.mean(energy_trained) > 2 * np.mean(energy_random)


def test_collect_scores_every_slice_with_blood_beside_the_baselines(small_ct_ich, trained_toy):
    data = read_ct_ich(small_ct_ich)
    config = PreprocessConfig(windows=("brain",), img_size=32, seq_len=2)   # 2 samplings a scan
    records = collect_localization(trained_toy, data, data.patient_ids, config)
    cam = CamSpec().name
    assert set(records["method"]) == {cam, METHOD_RANDOMIZED, METHOD_CHANCE, METHOD_INTENSITY}
    assert set(records["patient_id"]) == {"050", "051"}               # the scans with blood
    assert set(records.loc[records["method"] == cam, "label"]) == {
        "any", "epidural", "subdural", "intraparenchymal"}
    # every slice with blood is scored, whichever of the two samplings read it
    from ichlib.io.load import load_mask

    with_blood = sorted((pid, int(k)) for pid in ("050", "051")
                        for k in np.flatnonzero(load_mask(data.masks[pid]).any(axis=(1, 2))))
    any_rows = records[(records["method"] == cam) & (records["label"] == "any")]
    assert sorted((p, int(k)) for p, k in any_rows[["patient_id", "slice_index"]].to_numpy()) == with_blood
    assert len(with_blood) == 6
    # the randomised model is scored for "any" only; energy is scored inside the brain too
    assert set(records.loc[records["method"] == METHOD_RANDOMIZED, "label"]) == {"any"}
    assert records["energy_in_brain"].between(0, 1).all()
    table = localization_table(records, n_boot=50)
    assert table["energy_in_brain_ci_low"].le(table["energy_in_brain"] + 1e-12).all()
    row = table.set_index(["method", "label"]).loc[(METHOD_INTENSITY, "any")]
    # the fixture's bleeds are 70 HU squares in 30 HU brain: the intensity map finds them
    assert row["pointing_0mm"] == 1.0 and row["n_patients"] == 2 and row["n_slices"] == 6
    assert row["energy"] > 0.3
    for column in ("energy", "pointing_0mm", "pointing_5mm", "dice"):
        assert table[f"{column}_ci_low"].le(table[column] + 1e-12).all()


def test_compare_cams_ranks_the_candidates_on_validation(small_ct_ich, trained_toy):
    data = read_ct_ich(small_ct_ich)
    config = PreprocessConfig(windows=("brain",), img_size=32, seq_len=4)
    candidates = (CamSpec("gradcam", ("layer4",)), CamSpec("layercam", ("layer3",)),
                  CamSpec("gradcam", ("layer3", "layer4")))
    comparison = compare_cams(trained_toy, data, data.patient_ids, config, candidates, n_boot=20)
    table, chosen, thresholds = comparison.table, comparison.chosen, comparison.dice_thresholds
    names = [c.name for c in candidates]
    ranked = table[table["method"].isin(names)]
    assert list(table["method"][:3]) == list(ranked["method"])  # candidates first, the baselines after
    # ranked by the weaker of the two margins over the chance prior (pointing floored at one slice)
    chance = table.set_index("method").loc[METHOD_CHANCE]
    by_hand = {m: min(r["pointing_0mm"] / max(chance["pointing_0mm"], 1 / chance["n_slices"]),
                      r["energy_in_brain"] / chance["energy_in_brain"])
               for m, r in ranked.set_index("method").iterrows()}
    assert ranked.set_index("method")["margin"].to_dict() == pytest.approx(by_hand)
    assert list(ranked["margin"]) == sorted(by_hand.values(), reverse=True)
    assert table.loc[~table["method"].isin(names), "margin"].isna().all()
    assert list(table["method"][3:]) and set(table["method"][3:]) == {METHOD_CHANCE, METHOD_RANDOMIZED,
                                                                      METHOD_INTENSITY}
    assert chosen.name == table["method"].iloc[0] and set(thresholds) == set(table["method"])
    assert set(table["label"]) == {"any"}
    without = compare_cams(trained_toy, data, data.patient_ids, config, candidates, baselines=False, n_boot=20)
    alone, chosen_alone = without.table, without.chosen
    # without the references, the highest pointing game (ties: energy) is the default
    assert list(alone["method"]) == sorted(names, key=lambda m: (
        -alone.set_index("method").loc[m, "pointing_0mm"], -alone.set_index("method").loc[m, "energy"]))
    assert chosen_alone.name == alone["method"].iloc[0] and "margin" not in alone


def test_verdict_compares_the_cam_with_the_chance_prior_by_the_targets():
    def table(point, energy, energy_low, point_low=None, chance_point=0.02, chance_energy=0.02, chance_high=0.03):
        return pd.DataFrame([
            {"method": "cam", "label": "any", "pointing_0mm": point, "energy": energy,
             "pointing_0mm_ci_low": point * 0.6 if point_low is None else point_low,
             "pointing_0mm_ci_high": point * 1.5, "energy_ci_low": energy_low, "energy_ci_high": energy + 0.05},
            {"method": METHOD_CHANCE, "label": "any", "pointing_0mm": chance_point, "energy": chance_energy,
             "pointing_0mm_ci_low": chance_point / 2, "pointing_0mm_ci_high": chance_high,
             "energy_ci_low": chance_energy / 2, "energy_ci_high": chance_high}])

    met = localization_verdict(table(0.06, 0.2, 0.1), "cam").splitlines()
    assert met[0].endswith(": MET") and "3.0×" in met[0] and met[1].endswith(": MET") and "10.0×" in met[1]
    short = localization_verdict(table(0.035, 0.2, 0.1), "cam").splitlines()  # 1.75× chance
    assert short[0].endswith("NOT MET") and "1.8×" in short[0]
    close = localization_verdict(table(0.06, 0.2, 0.1, point_low=0.025), "cam").splitlines()  # 3×, overlapping
    assert close[0].endswith("NOT MET") and "overlap" in close[0]
    overlap = localization_verdict(table(0.06, 0.2, 0.025), "cam").splitlines()  # 10×, intervals overlap
    assert overlap[1].endswith("NOT MET") and "overlap" in overlap[1]
    assert localization_verdict(table(0.6, 0.2, 0.1), "other").startswith("no verdict")
    # with energy inside the brain, that is the energy target and the whole-slice energy is reported
    inside = table(0.06, 0.03, 0.025)
    inside["energy_in_brain"] = [0.2, 0.02]
    inside["energy_in_brain_ci_low"] = [0.1, 0.01]
    inside["energy_in_brain_ci_high"] = [0.3, 0.03]
    lines = localization_verdict(inside, "cam").splitlines()
    assert len(lines) == 3 and lines[1].startswith("energy in mask, inside the brain")
    assert "10.0×" in lines[1] and "target" in lines[1] and lines[1].endswith(": MET")
    assert lines[2].startswith("energy in mask, whole slice") and "not a target" in lines[2]
    assert lines[2].endswith("NOT MET")
