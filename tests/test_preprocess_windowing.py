import numpy as np
import pytest
import torch

from ichlib.errors import ConfigError
from ichlib.preprocess.windowing import (
    WINDOWS,
    lesion_contrast,
    multi_window,
    resolve_windows,
    window,
)


def test_presets_are_the_clinical_windows():
    assert WINDOWS["brain"] == (40.0, 80.0)
    assert WINDOWS["subdural"] == (80.0, 200.0)
    assert WINDOWS["soft"] == (40.0, 380.0)
    assert WINDOWS["bone"] == (600.0, 2800.0)


def test_brain_window_by_hand():
    # brain 40/80 spans 0..80 HU: 0 -> 0, 20 -> 0.25, 40 -> 0.5, 80 -> 1, outside clipped
    hu = np.array([-1000.0, 0.0, 20.0, 40.0, 70.0, 80.0, 1500.0])
    expected = np.array([0.0, 0.0, 0.25, 0.5, 0.875, 1.0, 1.0], dtype=np.float32)
    out = window(hu, 40, 80)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-7)


def test_bone_window_by_hand():
    # bone 600/2800 spans -800..2000 HU
    out = window(np.array([-800.0, 600.0, 1300.0]), 600, 2800)
    np.testing.assert_allclose(out, [0.0, 0.5, 0.75], atol=1e-7)


def test_matches_monai_scale_intensity_range_semantics():
    # ScaleIntensityRange(a_min, a_max, b_min=0, b_max=1, clip=True):
    # clip((x - a_min) / (a_max - a_min) * (b_max - b_min) + b_min, b_min, b_max)
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1200, 2500, size=(4, 16, 16))
    for center, width in WINDOWS.values():
        a_min, a_max = center - width / 2, center + width / 2
        reference = np.clip((hu - a_min) / (a_max - a_min), 0, 1)
        np.testing.assert_allclose(window(hu, center, width), reference, atol=1e-6)


def test_torch_and_numpy_agree():
    hu = np.linspace(-100, 200, 50, dtype=np.float32)
    np.testing.assert_allclose(window(torch.from_numpy(hu), 80, 200).numpy(), window(hu, 80, 200),
                               atol=1e-7)


def test_multi_window_stacks_channels_in_order():
    hu = np.full((3, 4, 5), 60.0, dtype=np.float32)
    out = multi_window(hu, ["brain", "subdural", "bone"])
    assert out.shape == (3, 3, 4, 5)
    np.testing.assert_allclose(out[0, :, 0, 0], [0.75, 0.4, (60 + 800) / 2800], atol=1e-6)
    assert multi_window(torch.from_numpy(hu), "brain,soft").shape == (3, 2, 4, 5)


@pytest.mark.parametrize("bad", [["nope"], []])
def test_unknown_or_empty_windows_are_refused(bad):
    with pytest.raises(ConfigError):
        resolve_windows(bad)


def test_nonpositive_width_is_refused():
    with pytest.raises(ConfigError):
        window(np.zeros(3), 40, 0)


def test_contrast_by_hand():
    hu = np.full((1, 10, 10), 30.0)
    lesion = np.zeros_like(hu, bool)
    lesion[0, :2] = True
    hu[lesion] = 70.0
    hu[0, 5:, :] = [[28.0, 32.0] * 5] * 5  # some spread in the reference
    ref = ~lesion
    table = lesion_contrast(hu, lesion, ref, ["brain", (40, 400)])
    # brain 40/80: lesion 70 -> 0.875, reference mean 30 -> 0.375
    assert table.loc["brain", "lesion"] == pytest.approx(0.875)
    assert table.loc["brain", "contrast"] == pytest.approx(0.5, abs=1e-3)
    assert table.loc["40/400", "contrast"] == pytest.approx(0.1, abs=1e-3)
    assert table.loc["brain", "cnr"] > table.loc["40/400", "cnr"] * 0.99
