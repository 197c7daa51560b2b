import numpy as np
import pandas as pd
import pytest

from ichlib.errors import ConfigError
from ichlib.labels import LABELS, SUBTYPES
from ichlib.preprocess.splits import (
    check_disjoint,
    cv_split,
    iterative_stratification,
    kfold_split,
    patient_split,
    rsna_group_split,
)


def _patients(n_pos=36, n_neg=39):
    ids = [f"{i:03d}" for i in range(1, n_pos + n_neg + 1)]
    return pd.DataFrame({"any": [1] * n_pos + [0] * n_neg}, index=ids)


def _multilabel(n=75, seed=0, rare=3):
    """CT-ICH-like labels: ~half with blood, common and rare subtypes, co-occurring."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(0, index=[f"{i:03d}" for i in range(n)], columns=list(LABELS))
    rates = {"intraparenchymal": 0.25, "intraventricular": 0.1, "subarachnoid": 0.2, "subdural": 0.15}
    for label, rate in rates.items():
        table[label] = (rng.random(n) < rate).astype(int)
    table["epidural"] = 0
    table.iloc[rng.choice(n, rare, replace=False), LABELS.index("epidural")] = 1
    table["any"] = table[list(SUBTYPES)].max(axis=1)
    return table


def test_split_is_disjoint_complete_stratified_and_seeded():
    pats = _patients()
    parts = patient_split(pats, 0.15, 0.15, seed=3)
    check_disjoint(parts)
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == sorted(pats.index)
    # 75 patients: round(11.25) = 11 in test and in val; 36 positives: 36 * 11 / 75 = 5.3 each
    assert pats.loc[parts["test"], "any"].sum() == 5 and len(parts["test"]) == 11
    assert pats.loc[parts["val"], "any"].sum() == 5 and len(parts["val"]) == 11
    assert patient_split(pats, seed=3) == parts
    assert patient_split(pats, seed=4) != parts


def test_kfold_covers_every_patient_once():
    pats = _patients(20, 25)
    folds = kfold_split(pats, n_folds=5, seed=0)
    tests = [pid for f in folds for pid in f["test"]]
    assert sorted(tests) == sorted(pats.index)
    for f in folds:
        assert not set(f["train"]) & set(f["test"])
        assert sorted(f["train"] + f["test"]) == sorted(pats.index)
        assert pats.loc[f["test"], "any"].sum() == 4 and len(f["test"]) == 9
    assert kfold_split(pats, 5, seed=0) == folds


def test_three_rare_positives_over_three_folds_land_one_per_fold():
    for seed in range(10):
        pats = _multilabel(n=40, seed=seed, rare=3)
        folds = kfold_split(pats, n_folds=3, seed=seed)
        assert [int(pats.loc[f["test"], "epidural"].sum()) for f in folds] == [1, 1, 1]
        assert sorted(pid for f in folds for pid in f["test"]) == sorted(pats.index)


def _fold_spread(pats, stratify, seed):
    """Per subtype, the most minus the fewest positives over 5 test folds."""
    folds = kfold_split(pats, 5, seed, stratify=stratify)
    counts = [[int(pats.loc[f["test"], label].sum()) for f in folds] for label in SUBTYPES]
    return [max(c) - min(c) for c in counts]


def test_subtypes_spread_evenly_where_stratifying_on_any_does_not():
    multi, only_any, missing = [], [], {"multi-label": 0, "any": 0}
    for seed in range(20):
        pats = _multilabel(n=75, seed=seed, rare=3)
        multi.append(_fold_spread(pats, None, seed))
        only_any.append(_fold_spread(pats, "any", seed))
        for name, stratify in (("multi-label", None), ("any", "any")):
            test = patient_split(pats, 0.15, 0.15, seed, stratify=stratify)["test"]
            missing[name] += sum(pats[label].sum() >= 5 and pats.loc[test, label].sum() == 0
                                 for label in SUBTYPES)
    multi, only_any = np.array(multi), np.array(only_any)
    # Measured: mean spread 0.8-1.9 per subtype against 1.5-3.5 when stratified on `any`.
    assert (multi.mean(axis=0) < only_any.mean(axis=0)).all(), (multi.mean(0), only_any.mean(0))
    assert multi.mean() < 0.6 * only_any.mean()
    # A subtype with 5+ patients always reaches a 15% test part (16 misses in 20 seeds on `any`).
    assert missing["multi-label"] == 0 < missing["any"]


def test_iterative_stratification_follows_the_paper_by_hand():
    # Label 1 is rarest (2 rows) and is placed first, one per part; then label 0 (4 rows,
    # one of them already placed with label 1); then the unlabelled rows fill the parts.
    labels = np.array([[1, 1], [1, 0], [1, 0], [1, 1], [0, 0], [0, 0]])
    part = iterative_stratification(labels, [3, 3], seed=0)
    assert sorted(part[[0, 3]]) == [0, 1]
    assert np.bincount(part[labels[:, 0] == 1], minlength=2).tolist() == [2, 2]
    assert np.bincount(part, minlength=2).tolist() == [3, 3]
    with pytest.raises(ConfigError):
        iterative_stratification(labels, [0, 0])


def test_cv_split_puts_each_patient_in_one_test_fold_and_splits_the_rest():
    pats = _multilabel(n=30, seed=2)
    splits = [cv_split(pats, 3, k, val_fraction=0.2, seed=5) for k in range(3)]
    assert sorted(pid for s in splits for pid in s["test"]) == sorted(pats.index)
    for s in splits:
        check_disjoint(s)
        assert sorted(s["train"] + s["val"] + s["test"]) == sorted(pats.index)
        assert len(s["val"]) == 4  # round(0.2 * 20)
    assert cv_split(pats, 3, 1, 0.2, seed=5) == splits[1]
    with pytest.raises(ConfigError, match="fold must be in 0..2"):
        cv_split(pats, 3, 3)


def test_group_splits_keep_a_person_together():
    pats = _multilabel(n=24, seed=3)
    pats["person"] = [f"p{i // 2}" for i in range(24)]  # two series per person
    parts = rsna_group_split(pats, group="person", val_fraction=0.25, test_fraction=0.25, seed=0)
    folds = [cv_split(pats, 3, k, 0.25, seed=0, group="person") for k in range(3)]
    for split in [parts, *folds]:
        check_disjoint(split)
        for ids in split.values():
            assert pats.loc[ids, "person"].value_counts().eq(2).all()
    assert sorted(pid for f in folds for pid in f["test"]) == sorted(pats.index)
    with pytest.raises(ConfigError, match="'site'"):
        rsna_group_split(pats, group="site")


def test_check_disjoint_names_the_patient():
    with pytest.raises(ConfigError, match="007"):
        check_disjoint({"train": ["001", "007"], "test": ["007"]})


def test_bad_fractions_and_folds():
    with pytest.raises(ConfigError):
        patient_split(_patients(), 0.6, 0.5)
    with pytest.raises(ConfigError, match="cannot make 6 folds from 5 patients"):
        kfold_split(_patients(2, 3), 6)
    with pytest.raises(ConfigError, match="no label column"):
        patient_split(pd.DataFrame({"x": [1, 0]}, index=["a", "b"]))
