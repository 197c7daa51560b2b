import numpy as np
import pytest

from ichlib.ctich import read_ct_ich
from ichlib.explore import brain_mask, cooccurrence, head_mask, label_counts, lesion_contrast


def test_label_counts_and_cooccurrence_by_hand(small_ct_ich):
    data = read_ct_ich(small_ct_ich)
    counts = label_counts(data)
    # patients: 050 epidural, 051 subdural + intraparenchymal -> any = 2 of 4
    assert counts.loc["any", "patients"] == 2 and counts.loc["any", "patients_%"] == 50.0
    assert counts.loc["epidural", "slices"] == 2
    # 051: subdural on slices 2-3, IPH on 3-5 -> any on slices 2..5 = 4 slices; 050: 2 slices
    assert counts.loc["any", "slices"] == 6
    co = cooccurrence(data)
    assert co.loc["subdural", "intraparenchymal"] == 1 and co.loc["epidural", "epidural"] == 1
    assert co.loc["epidural", "subdural"] == 0
    assert cooccurrence(data, "slices").loc["subdural", "intraparenchymal"] == 1  # slice 3 only


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


def test_head_and_brain_masks():
    hu = np.full((1, 40, 40), -1000.0)
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    hu[0][r < 15] = 1000.0  # skull
    hu[0][r < 12] = 35.0    # brain
    assert head_mask(hu)[0, 20, 20] and not head_mask(hu)[0, 0, 0]
    b = brain_mask(hu)[0]
    assert b[20, 20] and not b[20, 33] and not b[0, 0]
