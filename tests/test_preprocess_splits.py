import pandas as pd
import pytest

from ichlib.errors import ConfigError
from ichlib.preprocess.splits import check_disjoint, kfold_split, patient_split


def _patients(n_pos=36, n_neg=39):
    ids = [f"{i:03d}" for i in range(1, n_pos + n_neg + 1)]
    return pd.DataFrame({"any": [1] * n_pos + [0] * n_neg}, index=ids)


def test_split_is_disjoint_complete_stratified_and_seeded():
    pats = _patients()
    parts = patient_split(pats, 0.15, 0.15, seed=3)
    check_disjoint(parts)
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == sorted(pats.index)
    # 36 positives: round(5.4) = 5 in test, 5 in val; 39 negatives: 6 and 6
    assert pats.loc[parts["test"], "any"].sum() == 5 and len(parts["test"]) == 11
    assert pats.loc[parts["val"], "any"].sum() == 5 and len(parts["val"]) == 11
    assert patient_split(pats, seed=3) == parts
    assert patient_split(pats, seed=4) != parts


def test_kfold_covers_every_patient_once():
    pats = _patients(20, 25)
    folds = kfold_split(pats, n_folds=5, seed=0)
    vals = [pid for f in folds for pid in f["val"]]
    assert sorted(vals) == sorted(pats.index)
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        assert pats.loc[f["val"], "any"].sum() == 4
    assert kfold_split(pats, 5, seed=0) == folds


def test_check_disjoint_names_the_patient():
    with pytest.raises(ConfigError, match="007"):
        check_disjoint({"train": ["001", "007"], "test": ["007"]})


def test_bad_fractions():
    with pytest.raises(ConfigError):
        patient_split(_patients(), 0.6, 0.5)
