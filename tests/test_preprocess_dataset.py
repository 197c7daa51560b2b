import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ichlib.errors import ConfigError, DataError
from ichlib.io.ctich import read_ct_ich
from ichlib.io.load import load_volume
from ichlib.labels import LABELS
from ichlib.preprocess.cache import CacheWarning, VolumeCache
from ichlib.preprocess.dataset import (
    PreprocessConfig,
    ScanDataset,
    prepare_scan,
    sampled_mask,
    sequence_labels,
)
from ichlib.preprocess.sampling import covering_indices, uniform_indices
from ichlib.preprocess.windowing import window


def test_item_shapes_labels_and_values(small_ct_ich, tmp_path):
    data = read_ct_ich(small_ct_ich)
    cfg = PreprocessConfig(windows=("brain", "subdural"), img_size=16, seq_len=4)
    ds = ScanDataset(data, data.patient_ids, cfg, cache_dir=tmp_path / "cache")
    item = ds[1]  # patient 050: 8 slices, epidural on slices 3-4
    assert item["patient_id"] == "050"
    assert item["x"].shape == (4, 2, 16, 16) and item["x"].dtype == torch.float32
    idx = uniform_indices(8, 4)
    assert item["slice_indices"].tolist() == idx.tolist() == [0, 2, 5, 7]
    np.testing.assert_array_equal(item["slice_labels"].numpy(), data.slice_labels("050")[idx])
    assert item["slice_labels"][1, LABELS.index("epidural")] == 1  # slice index 2 = SliceNumber 3
    np.testing.assert_array_equal(item["scan_labels"].numpy(), data.scan_labels("050"))
    # values: the windowed, resized HU of those slices
    hu = load_volume(data.scans["050"]).hu[idx]
    ref = window(torch.nn.functional.interpolate(torch.from_numpy(hu)[:, None], size=(16, 16),
                                                 mode="bilinear", antialias=True)[:, 0].numpy(), 40, 80)
    np.testing.assert_allclose(item["x"][:, 0].numpy(), ref, atol=2e-2)  # float16 cache


def test_cache_matches_uncached_and_is_reused(small_ct_ich, tmp_path):
    data = read_ct_ich(small_ct_ich)
    cfg = PreprocessConfig(img_size=16, seq_len=5)
    cached = ScanDataset(data, data.patient_ids, cfg, cache_dir=tmp_path / "c")
    plain = ScanDataset(data, data.patient_ids, cfg, cache_dir=None)
    for i in range(len(plain)):
        np.testing.assert_allclose(cached[i]["x"].numpy(), plain[i]["x"].numpy(), atol=1e-2)
    files = sorted((tmp_path / "c").glob("*.npy"))
    assert len(files) == 4
    mtimes = [f.stat().st_mtime_ns for f in files]
    _ = [cached[i] for i in range(len(cached))]
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert not list((tmp_path / "c").glob(".*"))


def test_cache_built_by_several_workers_at_once_is_whole(small_ct_ich, tmp_path):
    """Distributed ranks may build the same entry at the same moment: each writes its own
    temporary file and renames it, so every entry ends whole and nothing is left over."""
    data = read_ct_ich(small_ct_ich)
    expected = {pid: np.array(VolumeCache(tmp_path / "reference", 16).get(path))
                for pid, path in data.scans.items()}
    start = threading.Barrier(4)

    def build(_: int) -> dict[str, np.ndarray]:
        cache = VolumeCache(tmp_path / "shared", 16)
        start.wait()
        return {pid: np.array(cache.get(path)) for pid, path in data.scans.items()}

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(build, range(4)))
    for got in results:
        assert got.keys() == expected.keys()
        for pid, volume in expected.items():
            np.testing.assert_array_equal(got[pid], volume)
    files = sorted(p.name for p in (tmp_path / "shared").iterdir())
    assert len(files) == 2 * len(expected)  # each volume and its record, nothing left over
    assert sorted(f for f in files if f.endswith(".npy")) == sorted(f[:-5] for f in files if f.endswith(".json"))
    for path in (tmp_path / "shared").glob("*.npy"):
        assert np.load(path).shape[1:] == (16, 16)


def test_cache_rebuilds_a_corrupt_entry(small_ct_ich, tmp_path):
    data = read_ct_ich(small_ct_ich)
    cache = VolumeCache(tmp_path / "c", 16)
    first = np.array(cache.get(data.scans["049"]))
    cache.path_for(data.scans["049"]).write_bytes(b"junk")
    with pytest.warns(CacheWarning, match="is unreadable"):
        np.testing.assert_array_equal(np.array(cache.get(data.scans["049"])), first)


def test_batches_collate_to_b_s_c_h_w(small_ct_ich, tmp_path):
    data = read_ct_ich(small_ct_ich)
    ds = ScanDataset(data, data.patient_ids, PreprocessConfig(img_size=16, seq_len=6), tmp_path / "c")
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["x"].shape == (3, 6, 1, 16, 16)
    assert batch["slice_labels"].shape == (3, 6, 6) and batch["scan_labels"].shape == (3, 6)
    assert batch["patient_id"] == ["049", "050", "051"]


def test_short_scan_repeats_slices(small_ct_ich, tmp_path):
    data = read_ct_ich(small_ct_ich)
    ds = ScanDataset(data, ["052"], PreprocessConfig(img_size=16, seq_len=7), tmp_path / "c")
    item = ds[0]
    assert item["slice_indices"].tolist() == [0, 0, 1, 1, 1, 2, 2]
    torch.testing.assert_close(item["x"][0], item["x"][1])


def test_training_jitter_and_augment_depend_on_seed_and_epoch(small_ct_ich, tmp_path):
    data = read_ct_ich(small_ct_ich)
    seen = []

    def augment(x, rng):
        seen.append(rng.integers(1 << 30))
        return 1.0 - x

    ds = ScanDataset(data, ["050"], PreprocessConfig(img_size=16, seq_len=4), tmp_path / "c",
                     train=True, augment=augment, seed=5)
    a, b = ds[0], ds[0]
    torch.testing.assert_close(a["x"], b["x"])
    assert seen[0] == seen[1]
    ds.set_epoch(1)
    c = ds[0]
    assert seen[2] != seen[0]
    assert c["x"].min() >= 0 and (a["x"].max() <= 1)
    evaluation = ScanDataset(data, ["050"], PreprocessConfig(img_size=16, seq_len=4), tmp_path / "c")
    assert evaluation[0]["slice_indices"].tolist() == [0, 2, 5, 7]


def test_prepare_scan_and_sampled_mask(small_ct_ich):
    data = read_ct_ich(small_ct_ich)
    hu = load_volume(data.scans["050"]).hu
    x, idx = prepare_scan(hu, PreprocessConfig(img_size=16, seq_len=4))
    assert x.shape == (4, 1, 16, 16) and idx.tolist() == [0, 2, 5, 7]
    mask = sampled_mask(data, "050", idx, 16)
    assert mask.shape == (4, 16, 16) and mask.dtype == bool
    assert mask[1].sum() > 0 and mask[0].sum() == 0 and mask[3].sum() == 0


def test_config_round_trip_and_validation():
    cfg = PreprocessConfig(windows="brain,subdural,soft", img_size=64, seq_len=8)
    assert cfg.windows == ("brain", "subdural", "soft") and cfg.n_channels == 3
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        PreprocessConfig(windows=("lung",))
    with pytest.raises(ConfigError):
        PreprocessConfig(seq_len=0)


def test_unknown_patient(small_ct_ich):
    data = read_ct_ich(small_ct_ich)
    with pytest.raises(DataError, match="999"):
        ScanDataset(data, ["999"])


# --- targets that match the input, and whole scans for evaluation --------------------------

def test_sequence_labels_are_the_or_of_the_slices():
    y = np.zeros((4, 6), dtype=np.float32)
    y[2, [0, 3]] = 1
    y[3, [0, 5]] = 1
    np.testing.assert_array_equal(sequence_labels(y), [1, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(sequence_labels(np.zeros((3, 6))), np.zeros(6))
    with pytest.raises(ConfigError, match="slice labels"):
        sequence_labels(np.zeros((0, 6)))


def test_training_targets_say_blood_only_when_a_sampled_slice_shows_it(make_ct_ich, tmp_path):
    # 40 slices, epidural on slice 20 alone: 4 jittered slices (one per 10-slice segment)
    # pick it about one time in ten.
    lab = np.zeros((40, 5), dtype=int)
    lab[20, 3] = 1
    data = read_ct_ich(make_ct_ich({7: lab}, size=16))
    assert data.scan_labels("007")[0] == 1
    train = ScanDataset(data, ["007"], PreprocessConfig(img_size=16, seq_len=4), tmp_path / "c", train=True)
    hits = misses = 0
    for epoch in range(60):
        train.set_epoch(epoch)
        item = train[0]
        shows_blood = bool(item["slice_labels"][:, 0].max() > 0)
        np.testing.assert_array_equal(item["scan_labels"].numpy(), item["slice_labels"].numpy().max(axis=0))
        assert bool(item["scan_labels"][0] > 0) == shows_blood
        hits, misses = hits + shows_blood, misses + (not shows_blood)
    assert hits >= 1 and misses >= 30  # both cases occurred
    # evaluation keeps the patient's label
    evaluation = ScanDataset(data, ["007"], PreprocessConfig(img_size=16, seq_len=4), tmp_path / "c")
    np.testing.assert_array_equal(evaluation[0]["scan_labels"].numpy(), data.scan_labels("007"))


def test_all_slices_items_hold_the_whole_scan_and_its_samplings(small_ct_ich, tmp_path):
    data = read_ct_ich(small_ct_ich)
    cfg = PreprocessConfig(windows=("brain", "subdural"), img_size=16, seq_len=3)
    whole = ScanDataset(data, data.patient_ids, cfg, tmp_path / "c", all_slices=True)
    sampled = ScanDataset(data, data.patient_ids, cfg, tmp_path / "c")
    item = whole[1]  # patient 050: 8 slices
    assert item["x"].shape == (8, 2, 16, 16)
    assert item["slice_indices"].tolist() == list(range(8))
    np.testing.assert_array_equal(item["slice_labels"].numpy(), data.slice_labels("050"))
    np.testing.assert_array_equal(item["scan_labels"].numpy(), data.scan_labels("050"))
    np.testing.assert_array_equal(item["samplings"].numpy(), covering_indices(8, 3))
    # the same pixels as the sampled item at the sampled slices
    part = sampled[1]
    torch.testing.assert_close(item["x"][part["slice_indices"]], part["x"])
    batch = next(iter(DataLoader(whole, batch_size=1)))
    assert batch["x"].shape == (1, 6, 2, 16, 16) and batch["samplings"].shape == (1, 2, 3)
    with pytest.raises(ConfigError, match="all_slices"):
        ScanDataset(data, data.patient_ids, cfg, tmp_path / "c", train=True, all_slices=True)
