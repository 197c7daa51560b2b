"""Distributed training: torchrun with 2 gloo processes on the CPU against one process.

The torchrun runs are real: ``python -m torch.distributed.run --standalone
--nproc_per_node=2`` starts two workers. One run (module fixture) trains with this file as
the worker script and feeds three tests; another runs ``ichlib train`` and kills a worker.
For the weights of 2 x 2 scans to equal 1 x 4, BatchNorm uses its running statistics
(:class:`FixedBatchNorm2d`) and dropout is off: both otherwise depend on how a batch is
split, which DDP cannot hide. The optimizer is SGD with momentum: AdamW divides each
gradient by its running RMS, which turns the float rounding of near-zero gradients (summed
in another order over 2 ranks) into weight differences of about 1e-5 after a few steps;
SGD keeps the comparison at float precision and still checks gradients and optimizer state.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import ichlib
import ichlib.training.fit
import ichlib.training.strategies
from ichlib.checkpoint import load_checkpoint
from ichlib.cli import main
from ichlib.errors import ConfigError, IchlibError
from ichlib.losses import LOSS_WEIGHT_KEY, LossParts, ScanSliceLoss
from ichlib.model import ModelOutput
from ichlib.training.config import TrainConfig
from ichlib.training.data import prepare_data
from ichlib.training.distributed import (
    DistContext,
    DistEnv,
    backend_for,
    detect_env,
    group_timeout,
    merge_eval_shards,
    peer_failure,
    process_device,
    session,
)
from ichlib.training.engine import EpochStats, evaluate, train_one_epoch
from ichlib.training.evaluation import final_evaluation
from ichlib.training.fit import fit
from ichlib.training.loaders import (
    EpochSampler,
    WeightedEpochSampler,
    WeightedItems,
    epoch_generator,
    epoch_order,
    eval_batches,
    make_eval_loader,
    make_loader,
)
from ichlib.training.log import RunLog

# 15 patients and fractions 0.35: 5 train, 5 val, 5 test. With a global batch of 4 the
# last training step has 1 scan (rank 1 gets only padding) and evaluation has 2 batches.
N_PATIENTS = 15


# --- the worker side (this file is also torchrun's script) --------------------------------

class FixedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics (γ, β still train)."""

    def train(self, mode: bool = True) -> FixedBatchNorm2d:
        return super().train(False)


def fixed_bn_model(config: TrainConfig) -> nn.Module:
    """``ichlib.training.strategies.build_model`` with every BatchNorm2d in the fixed mode."""
    model = BUILD_MODEL(config)
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = FixedBatchNorm2d
    return model


def sgd(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with momentum in place of ``ichlib.training.engine.make_optimizer``'s AdamW."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)


BUILD_MODEL = ichlib.training.strategies.build_model
MAKE_OPTIMIZER = ichlib.training.strategies.make_optimizer


def comparable(on: bool) -> None:
    """Switch training to fixed BatchNorm and SGD (on) or back to its own (off)."""
    ichlib.training.fit.build_model = fixed_bn_model if on else BUILD_MODEL
    ichlib.training.strategies.make_optimizer = sgd if on else MAKE_OPTIMIZER


def tiny_config(data: Path, out: Path, cache: Path, **changes) -> TrainConfig:
    from tests.conftest import tiny_train_config

    return tiny_train_config(data, out, **{"dropout": 0.0, "val_fraction": 0.35, "test_fraction": 0.35,
                                           "n_boot": 10, "amp": "off", "device": "cpu", "progress": True,
                                           "cache_dir": str(cache), **changes})


def _worker(data: str, out: str, cache: str) -> None:
    torch.set_num_threads(1)
    comparable(True)
    fit(tiny_config(Path(data), Path(out), Path(cache)))


# --- helpers ---------------------------------------------------------------------------

def _env(**extra: str) -> dict[str, str]:
    root = str(Path(ichlib.__file__).parent.parent)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "ICHLIB_DIST_TIMEOUT": "60",
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])), **extra}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from tests.conftest import labels_with, write_ct_ich

    return write_ct_ich(tmp_path_factory.mktemp("ddp") / "ds",
                        {49 + i: labels_with(6, (i % 5) if i % 2 else None, 1, 4)
                         for i in range(N_PATIENTS)}, size=32)


@pytest.fixture(scope="module")
def two_process_run(tiny_data, tmp_path_factory) -> dict:
    """``fit`` under torchrun with 2 processes (fixed BatchNorm, SGD), on a cold cache."""
    root = tmp_path_factory.mktemp("two")
    start = time.perf_counter()
    done = subprocess.run(_torchrun(__file__, str(tiny_data), str(root / "run"), str(root / "cache")),
                          env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return {"out": root / "run", "cache": root / "cache", "stdout": done.stdout,
            "seconds": time.perf_counter() - start}


@pytest.fixture(scope="module")
def one_process_run(tiny_data, tmp_path_factory) -> Path:
    """The same run in this process, one thread."""
    root = tmp_path_factory.mktemp("one")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    comparable(True)
    try:
        fit(tiny_config(tiny_data, root / "run", root / "cache", progress=False))
    finally:
        comparable(False)
        torch.set_num_threads(threads)
    return root / "run"


# --- the environment ---------------------------------------------------------------------

def test_detect_env_reads_torchrun_variables():
    assert detect_env({}) == DistEnv(0, 0, 1)
    assert detect_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == DistEnv(3, 1, 4)
    with pytest.raises(ConfigError, match="RANK=4, LOCAL_RANK=0, WORLD_SIZE=4"):
        detect_env({"RANK": "4", "LOCAL_RANK": "0", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="integers"):
        detect_env({"WORLD_SIZE": "two"})


def test_backend_device_and_timeout(monkeypatch):
    assert backend_for(torch.device("cuda", 0)) == "nccl" and backend_for(torch.device("cpu")) == "gloo"
    two = DistEnv(rank=1, local_rank=1, world_size=2)
    assert process_device(torch.device("cuda"), two) == torch.device("cuda", 1)
    assert process_device(torch.device("cpu"), two) == torch.device("cpu")
    monkeypatch.setenv("ICHLIB_DIST_TIMEOUT", "90")
    assert group_timeout() == datetime.timedelta(seconds=90)
    monkeypatch.setenv("ICHLIB_DIST_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="ICHLIB_DIST_TIMEOUT"):
        group_timeout()


def test_one_process_session_is_inactive(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with session(torch.device("cpu"), batch_size=3) as ctx:
        assert not ctx.enabled and ctx.is_main
        assert ctx.from_main(lambda: 7) == 7
        assert (ctx.rank, ctx.world_size) == (0, 1)
        values = np.array([1.5, 2.0])
        assert ctx.gather(values) == [values] and ctx.gather(values)[0] is values
        assert ctx.describe(3) == {"world_size": 1, "backend": "none", "global_batch_size": 3,
                                   "per_process_batch_size": 3, "lr_scaling": "none"}


def test_global_batch_must_split_over_the_processes():
    ctx = DistContext(env=DistEnv(0, 0, 4), backend="gloo")
    with pytest.raises(ConfigError, match="multiple of the 4 processes; try 4"):
        ctx.check_batch_size(6)
    ctx.check_batch_size(8)


def test_a_lost_peer_becomes_a_clear_error():
    lost = peer_failure(RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer"))
    assert isinstance(lost, IchlibError)
    assert "lost contact with another training process" in str(lost) and "--resume" in str(lost)
    assert peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


# --- data order and sharding ---------------------------------------------------------------

class Recorder(nn.Module):
    """Stands in for the model: remembers which items it was given, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x[:, 0, 0, 0, 0].long().tolist()
        return self.weight * x.mean()


def _index_items(n: int) -> list[dict]:
    return [{"x": torch.full((1, 1, 1, 1), float(i)), "scan_labels": torch.zeros(6),
             "slice_labels": torch.zeros(1, 6), "patient_id": str(i)} for i in range(n)]


@pytest.mark.parametrize("n", [1, 5, 8])
def test_epoch_order_is_the_order_one_process_trains_in(n):
    def criterion(output, scan_y, slice_y, weight=None):
        return LossParts(total=output, scan=output, slice=output)

    for epoch in (0, 3):
        model = Recorder()
        loader = make_loader(_index_items(n), batch_size=3, shuffle=True, seed=11, epoch=epoch)
        train_one_epoch(model, criterion, torch.optim.SGD(model.parameters(), lr=0.0), loader,
                        torch.device("cpu"), epoch)
        assert model.seen == epoch_order(n, 11, epoch)
    assert sorted(epoch_order(n, 11, 0)) == list(range(n))


def _old_loader_order(n: int, seed: int, epoch: int, batch_size: int) -> list[int]:
    """A frozen copy of ichlib's single-process training loader before EpochSampler: a
    ``RandomSampler`` on the per-epoch generator, read through the run's progress bar."""
    loader = torch.utils.data.DataLoader(list(range(n)), batch_size=batch_size, shuffle=True,
                                         generator=epoch_generator(seed, epoch))
    return [int(i) for batch in RunLog(progress=False).bar(loader) for i in batch]


@pytest.mark.parametrize(("n", "seed"), [(1, 0), (2, 5), (7, 0), (32, 11), (33, 3), (100, 2026)])
def test_the_epoch_sampler_keeps_the_old_single_process_order(n, seed):
    for epoch in (0, 1, 4):
        old = _old_loader_order(n, seed, epoch, batch_size=4)
        assert epoch_order(n, seed, epoch) == old
        new = make_loader(list(range(n)), batch_size=4, shuffle=True, seed=seed, epoch=epoch)
        assert isinstance(new.sampler, EpochSampler)
        assert [int(i) for batch in RunLog(progress=False).bar(new) for i in batch] == old
    if n > 2:  # the order does change with the epoch and the seed
        assert epoch_order(n, seed, 0) != epoch_order(n, seed, 1) != epoch_order(n, seed + 1, 1)


@pytest.mark.parametrize(("n", "world"), [(5, 2), (8, 4), (7, 3), (2, 3)])
def test_the_epoch_sampler_deals_the_order_round_robin(n, world):
    order = epoch_order(n, 4, 2)
    shares = []
    for rank in range(world):
        sampler = EpochSampler(list(range(n)), seed=4, num_replicas=world, rank=rank)
        sampler.set_epoch(2)
        shares.append(list(sampler))
    assert {len(share) for share in shares} == {-(-n // world)}  # padded to the same length
    dealt = [share[k] for k in range(len(shares[0])) for share in shares]
    assert dealt[:n] == order and dealt[n:] == order[:len(dealt) - n]


@pytest.mark.parametrize(("n", "batch", "world"), [(5, 4, 2), (8, 4, 2), (7, 6, 3), (9, 4, 4), (13, 8, 2)])
def test_sharded_steps_are_the_single_process_batches(n, batch, world):
    order = epoch_order(n, 2, 1)
    steps = [order[s:s + batch] for s in range(0, n, batch)]
    shares = []
    for rank in range(world):
        sampler = WeightedEpochSampler(list(range(n)), batch, seed=2, num_replicas=world, rank=rank)
        sampler.set_epoch(1)
        items = list(sampler)
        shares.append([items[k:k + batch // world] for k in range(0, len(items), batch // world)])
    assert all(len(s) == len(steps) for s in shares)  # every rank takes every step
    gen = torch.Generator().manual_seed(n)
    out = ModelOutput(torch.randn(n, 6, generator=gen), torch.randn(n, 2, 6, generator=gen))
    scan_y, slice_y = torch.rand(n, 6, generator=gen).round(), torch.rand(n, 2, 6, generator=gen).round()
    criterion = ScanSliceLoss(0.5)

    def loss(rows: list[int], weight: list[float] | None = None) -> float:
        weight = None if weight is None else torch.tensor(weight)
        return criterion(ModelOutput(out.scan_logits[rows], out.slice_logits[rows]), scan_y[rows],
                         slice_y[rows], weight).total.item()

    for k, step in enumerate(steps):
        real = [(i, w) for share in shares for i, w in share[k] if w > 0]
        assert sorted(i for i, _ in real) == sorted(step)  # each scan once, padding weighs 0
        # DDP averages the ranks' weighted losses: the mean over the global batch
        ranks = [loss([i for i, _ in share[k]], [w for _, w in share[k]]) for share in shares]
        assert sum(ranks) / world == pytest.approx(loss(step), rel=1e-6)
        assert {w for _, w in real} == {world / len(step)}


def test_weighted_items_add_the_loss_weight():
    items = WeightedItems([{"x": 0}, {"x": 1}])
    assert len(items) == 2 and items[(1, 0.5)] == {"x": 1, LOSS_WEIGHT_KEY: 0.5}


def test_epoch_stats_count_weighted_batches_and_merge_over_ranks():
    def parts(value: float) -> LossParts:
        return LossParts(*(torch.tensor(value * f) for f in (1.0, 2.0, 3.0)))

    one = EpochStats(seconds=2.0)  # one process: batches of 4 and 1 scans of 3 slices
    one.add(parts(0.5), 4, 3)
    one.add(parts(0.2), 1, 3)
    rank0, rank1 = EpochStats(seconds=1.0), EpochStats(seconds=1.5)  # the same over 2 ranks
    rank0.add(parts(0.5), 2, 3, torch.tensor([0.5, 0.5]))  # weighted sums: their mean is 0.5
    rank1.add(parts(0.5), 2, 3, torch.tensor([0.5, 0.5]))
    rank0.add(parts(0.4), 1, 3, torch.tensor([2.0]))  # one scan of loss 0.2, weight 2
    rank1.add(parts(0.0), 1, 3, torch.tensor([0.0]))  # padding
    merged = EpochStats.merge([rank0, rank1])
    assert (merged.scans, merged.slices, merged.seconds) == (5, 15, 1.5)
    np.testing.assert_allclose(merged.loss_sums, one.loss_sums)
    assert merged.as_dict()["loss"] == pytest.approx(one.loss) == pytest.approx(2.2 / 5)
    assert merged.scan_loss == pytest.approx(2 * merged.loss) and merged.slice_loss == pytest.approx(3 * merged.loss)
    assert one.slices_per_s == 15 / 2.0


class Scorer(nn.Module):
    """Stands in for the model in evaluation: logits from the items' values."""

    def forward(self, x: torch.Tensor) -> ModelOutput:
        value = x[:, 0, 0, 0, 0]
        return ModelOutput(value[:, None].repeat(1, 6) / 10, value[:, None, None].repeat(1, 2, 6) / 7)


class _Split(list):
    all_slices = False


def _eval_items(n: int) -> _Split:
    return _Split({"x": torch.full((2, 1, 1, 1), float(i)), "scan_labels": torch.zeros(6) + i % 2,
                   "slice_labels": torch.ones(2, 6), "slice_indices": torch.tensor([0, i]),
                   "patient_id": f"p{i}"} for i in range(n))


@pytest.mark.parametrize(("n", "batch", "world"), [(11, 3, 2), (11, 3, 3), (2, 3, 2), (4, 1, 3)])
def test_evaluation_shards_merge_into_the_single_process_result(n, batch, world):
    assert eval_batches(11, 3, 0, 2) == [[0, 1, 2], [6, 7, 8]]
    assert eval_batches(11, 3, 1, 2) == [[3, 4, 5], [9, 10]]
    assert eval_batches(2, 3, 1, 2) == []  # a rank may have nothing to evaluate
    config = TrainConfig(data_dir=".", out_dir=".", batch_size=batch)
    items, criterion, cpu = _eval_items(n), ScanSliceLoss(0.5), torch.device("cpu")
    single = evaluate(Scorer(), criterion, make_eval_loader(items, config), cpu)
    loaders = [make_eval_loader(items, config, num_replicas=world, rank=r) for r in range(world)]
    shards = [evaluate(Scorer(), criterion, loader, cpu) for loader in loaders if len(loader)]
    merged = merge_eval_shards(shards)
    assert merged.patient_ids == single.patient_ids == [f"p{i}" for i in range(n)]
    for key in ("scan_probs", "scan_labels", "slice_probs", "slice_labels", "slice_indices",
                "batch_sizes", "batch_losses"):
        np.testing.assert_array_equal(getattr(merged, key), getattr(single, key), err_msg=key)
    assert (merged.loss, merged.scan_loss, merged.slice_loss) == (single.loss, single.scan_loss, single.slice_loss)
    if (n, batch, world) == (11, 3, 2):  # rank 0 lost its second batch (6-8): a gap
        short = dataclasses.replace(shards[0], batch_sizes=shards[0].batch_sizes[:1])
        with pytest.raises(IchlibError, match=r"\[0, 1, 3\] are not 0..2"):
            merge_eval_shards([short, shards[1]])
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        merge_eval_shards([])


# --- torchrun: 2 processes against 1 --------------------------------------------------------

@pytest.mark.slow
def test_torchrun_two_processes_write_one_set_of_artefacts(two_process_run):
    out = two_process_run["out"]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "history.csv", "last.pt", "metrics.json"]
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    layout = {"world_size": 2, "backend": "gloo", "global_batch_size": 4, "per_process_batch_size": 2,
              "lr_scaling": "none"}
    assert {k: metrics["training"][k] for k in layout} == layout
    last = load_checkpoint(out / "last.pt")
    assert last["distributed"] == layout and last["epoch"] == 2
    assert not any(key.startswith("module.") for key in last["model"])  # no DDP prefix
    # Rank 0 alone reports: each line once.
    stdout = two_process_run["stdout"]
    assert stdout.count("epoch 2/2") == 1
    assert stdout.count("batch 4 scans per step (global) = 2 per process x 2 processes (gloo)") == 1
    # Both ranks built the cold cache together: one whole entry per scan, no temporary files.
    files = sorted(p.name for p in two_process_run["cache"].iterdir())
    cache = sorted(two_process_run["cache"].glob("*.npy"))
    assert len(cache) == N_PATIENTS and files == sorted([*(p.name for p in cache),
                                                         *(p.name + ".json" for p in cache)])
    assert all(np.load(p).shape == (6, 32, 32) for p in cache)


@pytest.mark.slow
def test_two_processes_of_batch_2_give_the_weights_of_one_process_of_batch_4(two_process_run,
                                                                              one_process_run):
    two = load_checkpoint(two_process_run["out"] / "last.pt")
    one = load_checkpoint(one_process_run / "last.pt")
    assert one["distributed"]["world_size"] == 1 and two["distributed"]["world_size"] == 2
    assert two["model"].keys() == one["model"].keys()
    deltas = {k: (two["model"][k].double() - v.double()).abs().max().item()
              for k, v in one["model"].items() if v.is_floating_point()}
    largest = max(v.abs().max().item() for v in one["model"].values() if v.is_floating_point())
    buffers = {k: (two["optimizer"]["state"][k]["momentum_buffer"].double(), v["momentum_buffer"].double())
               for k, v in one["optimizer"]["state"].items()}
    # Per tensor, |m(2 x 2) - m(1 x 4)| / |m(1 x 4)| in the L2 norm. The buffers hold raw
    # gradient sums: their float32 rounding depends on the order the ranks add them in and on
    # the CPU's conv kernels for batch 2 against batch 4, and cancelling terms magnify it (about
    # 1e-4 relative on an AVX512 EPYC, 2026-12). A gradient summed instead of averaged over the
    # ranks, or one rank's gradient lost, is off by 0.5 or more.
    momentum = {k: (torch.linalg.vector_norm(b2 - b1) / torch.linalg.vector_norm(b1).clamp_min(1e-12)).item()
                for k, (b2, b1) in buffers.items()}
    print(f"\nmax |weight(2 x 2) - weight(1 x 4)| = {max(deltas.values()):.3g} over {len(deltas)} "
          f"tensors (largest |weight| {largest:.3g}); largest relative momentum difference "
          f"{max(momentum.values()):.3g} over {len(momentum)} buffers")
    assert max(deltas.values()) < 1e-6, sorted(deltas.items(), key=lambda kv: -kv[1])[:3]
    assert max(momentum.values()) < 2e-3, sorted(momentum.items(), key=lambda kv: -kv[1])[:3]
    assert two["lr_scheduler"]["last_epoch"] == one["lr_scheduler"]["last_epoch"] == 4  # 2 steps x 2
    h2 = pd.read_csv(two_process_run["out"] / "history.csv")
    h1 = pd.read_csv(one_process_run / "history.csv")
    for column in ("train_loss", "train_scan_loss", "val_loss", "val_scan_loss"):
        np.testing.assert_allclose(h2[column], h1[column], rtol=1e-5, err_msg=column)


@pytest.mark.slow
def test_gathered_evaluation_equals_one_process_exactly(two_process_run, tiny_data, one_thread):
    """The 2-rank final evaluation in metrics.json against this process evaluating best.pt."""
    out = two_process_run["out"]
    config = tiny_config(tiny_data, out, two_process_run["cache"], progress=False)
    prepared = prepare_data(config)
    single = final_evaluation(config, prepared, out / "best.pt", torch.device("cpu"), "real")
    gathered = json.loads((out / "metrics.json").read_text())
    expected = json.loads(json.dumps(ichlib.training.evaluation.json_safe(single)))
    for split in ("val", "test"):
        assert gathered[split] == expected[split], split
    test_ids = prepared.split["test"]
    assert list(gathered["test"]["probabilities"]) == test_ids  # loader order, each patient once
    assert gathered["test"]["patient"]["n"] == len(test_ids) == 5
    assert gathered["val"]["patient"]["n"] == len(prepared.split["val"]) == 5
    assert gathered["thresholds"] == expected["thresholds"]


# --- killing a worker ---------------------------------------------------------------------------

def _worker_pid(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's child with ``RANK=rank`` (read from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_killing_a_worker_stops_the_run_then_one_process_resumes(tiny_data, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = ["train", "--data", str(tiny_data), "--out", str(run), "--epochs", "2", "--batch-size", "4",
            "--img-size", "32", "--seq-len", "4", "--n-boot", "5", "--amp", "off", "--device", "cpu",
            "--deterministic", "--cache-dir", str(cache)]
    proc = subprocess.Popen(_torchrun("-m", "ichlib", *args), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists():  # rank 0 wrote epoch 1
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "epoch 1 did not finish in time"
            time.sleep(0.01)
        victim = _worker_pid(proc.pid, rank=1)
        assert victim is not None, "no worker with RANK=1 under torchrun"
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        output, _ = proc.communicate(timeout=60)  # ends, does not hang
        ended = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    with capsys.disabled():
        print(f"\ntorchrun exited ({proc.returncode}) {ended:.1f} s after the SIGKILL of rank 1")
    assert proc.returncode != 0 and ended < 60
    assert "SIGKILL" in output, output  # torchrun names the worker that died
    assert not (run / "metrics.json").exists(), "the run finished before the kill"
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
    interrupted = load_checkpoint(run / "last.pt")
    assert interrupted["distributed"]["world_size"] == 2
    assert interrupted["epoch"] == 1

    capsys.readouterr()
    assert main([*args, "--resume"]) == 0  # one process, no torchrun
    out = capsys.readouterr().out
    assert f"Resuming {run} after epoch 1 of 2" in out
    assert "2 processes" not in out and "4 per process x 1 process" in out
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert history["train_loss"].iloc[0] == pytest.approx(interrupted["history"][0]["train_loss"], rel=1e-12)
    final = load_checkpoint(run / "last.pt")
    assert final["epoch"] == 2 and final["distributed"]["world_size"] == 1
    assert json.loads((run / "metrics.json").read_text())["training"]["epochs_run"] == 2


if __name__ == "__main__":  # torchrun's worker script for the two_process_run fixture
    _worker(*sys.argv[1:4])
