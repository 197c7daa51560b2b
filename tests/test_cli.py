"""The command line's contract: --version, exit statuses, option values checked before any
work, the help, warnings as lines, Ctrl-C during training, and no progress bars in logs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

import ichlib
from ichlib.checkpoint import load_checkpoint
from ichlib.cli import (
    DEFAULT_IMAGE_SOURCE,
    DEFAULT_WINDOWS,
    EXIT_STATUS,
    IMAGE_SOURCES,
    WINDOW_NAMES,
    build_parser,
    main,
)
from ichlib.labels import LABELS
from ichlib.preprocess.windowing import WINDOWS
from ichlib.training.config import TrainConfig
from tests.conftest import labels_with, remount_read_only, write_ct_ich

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


# --- version -------------------------------------------------------------------------------

def test_version_has_one_source(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"ichlib {ichlib.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert not re.search(r"__version__\s*=\s*['\"]", (ROOT / "ichlib" / "__init__.py").read_text())


# --- option values: one usage line, exit 2, before any work ---------------------------------

def _bad_values(tmp: Path, write: bool = True) -> dict[str, tuple[list[str], str]]:
    a_file = tmp / "a_file"
    if write:
        a_file.write_text("x")
    train = ["train", "--data", str(tmp), "--out", str(tmp / "run")]
    return {
        "cam_label": (["predict", "--checkpoint", "x.pt", "scan.nii", "--cam-label", "blood"],
                      "argument --cam-label: invalid choice: 'blood'"),
        "seed_negative": ([*train, "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
        "lr_negative": ([*train, "--lr", "-1"], "argument --lr: must be above 0, got -1"),
        "lr_nan": ([*train, "--lr", "nan"], "argument --lr: must be above 0, got nan"),
        "num_workers_negative": ([*train, "--num-workers", "-1"], "argument --num-workers: must be at least 0"),
        "device_bogus": ([*train, "--device", "bogus"], "argument --device: 'bogus' is not a device"),
        "device_type_unsupported": ([*train, "--device", "meta"], "argument --device: device type 'meta'"),
        "out_is_a_file": (["train", "--data", str(tmp), "--out", str(a_file)],
                          f"argument --out: {a_file} is a file, not a folder"),
        "out_under_a_file": (["train", "--data", str(tmp), "--out", str(a_file / "run")],
                             f"argument --out: {a_file} is a file, so {a_file / 'run'} cannot be created"),
        "cache_dir_is_a_file": ([*train, "--cache-dir", str(a_file)], "argument --cache-dir: .* is a file"),
        "windows_unknown": ([*train, "--windows", "brain,lung"], "argument --windows: unknown window 'lung'"),
        "aux_weight_above_1": ([*train, "--aux-weight", "2"], r"argument --aux-weight: must be in \[0, 1\]"),
        "epochs_zero": ([*train, "--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
        "img_size_text": ([*train, "--img-size", "big"], "argument --img-size: 'big' is not a whole number"),
        "resume_and_overwrite": ([*train, "--resume", "--overwrite"],
                                 "argument --overwrite: not allowed with argument --resume"),
        "backbone_unknown": ([*train, "--backbone", "vgg16"], "argument --backbone: invalid choice"),
        "synth_no_patients": (["synth", str(tmp / "s"), "--patients", "0"], "argument --patients: must be at least 1"),
        "synth_tiny": (["synth", str(tmp / "s"), "--size", "8"], "argument --size: must be at least 32"),
        "cam_out_is_a_file": (["predict", "--checkpoint", "x.pt", "scan.nii", "--cam", str(a_file)],
                              "argument --cam: .* is a file"),
        "cam_top_k_zero": (["predict", "--checkpoint", "x.pt", "scan.nii", "--cam-top-k", "0"],
                           "argument --cam-top-k: must be at least 1"),
        "unknown_option": ([*train, "--learning-rate", "1"], "unrecognized arguments: --learning-rate"),
        "rsna_csv_is_a_folder": (["predict", "--checkpoint", "x.pt", "d", "--rsna-csv", str(tmp)],
                                 "argument --rsna-csv: .* is a folder, not a file"),
        "rsna_csv_with_cam": (["predict", "--checkpoint", "x.pt", "d", "--rsna-csv", str(tmp / "s.csv"),
                               "--cam", str(tmp / "cams")], "--cam cannot be combined with --rsna-csv"),
        "slices_with_json": (["predict", "--checkpoint", "x.pt", "scan.nii", "--json", "--slices"],
                             "--slices applies to the text output only .*--json, which always holds"),
        "slices_with_rsna_csv": (["predict", "--checkpoint", "x.pt", "d", "--rsna-csv", str(tmp / "s.csv"),
                                  "--slices"], "--slices applies to the text output only .*--rsna-csv"),
        "prior_without_rsna_csv": (["predict", "--checkpoint", "x.pt", "d", "--prior-from", "t.csv"],
                                   "--prior-from only apply with --rsna-csv"),
        "image_source_unknown": (["predict", "--checkpoint", "x.pt", "d", "--rsna-csv", str(tmp / "s.csv"),
                                  "--image-source", "lstm"], "argument --image-source: invalid choice"),
        "evaluate_nothing_to_score": (["evaluate", "--data", "d"], "one of the arguments --checkpoint "
                                                                   "--submission is required"),
        "evaluate_both": (["evaluate", "--data", "d", "--checkpoint", "x.pt", "--submission", "s.csv"],
                          "argument --submission: not allowed with argument --checkpoint"),
        "evaluate_split_unknown": (["evaluate", "--data", "d", "--checkpoint", "x.pt", "--split", "holdout"],
                                   "argument --split: invalid choice"),
        "evaluate_n_boot_negative": (["evaluate", "--data", "d", "--checkpoint", "x.pt", "--n-boot", "-1"],
                                     "argument --n-boot: must be at least 0"),
    }


BAD_VALUE_CASES = sorted(_bad_values(Path("/nonexistent"), write=False))


@pytest.mark.parametrize("case", BAD_VALUE_CASES)
def test_a_bad_option_value_fails_at_once_with_one_usage_line(case, tmp_path, capsys, monkeypatch):
    argv, message = _bad_values(tmp_path)[case]
    ran = []
    for name in ("_cmd_train", "_cmd_predict", "_cmd_synth", "_cmd_evaluate"):
        monkeypatch.setattr(f"ichlib.cli.{name}", lambda args, name=name: ran.append(name))
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and not ran
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.match(rf"ichlib( {argv[0]})?: error: ", last) and re.search(message, last), err


def test_cuda_that_is_not_there_is_a_usage_error(tmp_path, capsys):
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--device", f"cuda:{count}"])
    assert info.value.code == 2
    assert "argument --device: cuda" in capsys.readouterr().err


def test_a_read_only_out_folder_is_a_usage_error(small_fs, capsys):
    fs = small_fs(size="64k")
    remount_read_only(fs)
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", str(fs), "--out", str(fs / "run")])
    assert info.value.code == 2
    assert f"argument --out: cannot write into {fs} (read-only file system" in capsys.readouterr().err


# --- exit statuses ----------------------------------------------------------------------------

def test_exit_status_1_for_data_and_run_problems(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert main(["predict", "--checkpoint", str(missing), str(tmp_path / "scan.nii")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"ichlib predict: error: {missing}: checkpoint file not found"
    assert main(["train", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "run")]) == 1
    assert "ichlib train: error:" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "nodata")]) == 1


def test_the_exit_statuses_are_documented_in_help_and_docs(capsys):
    for argv in (["--help"], ["train", "--help"], ["predict", "--help"], ["evaluate", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "exit status:" in out and "2    a usage error" in out and "130  interrupted" in out
    documented = re.findall(r"^\| `(\d+)` \|", (ROOT / "docs" / "cli.md").read_text(), re.M)
    assert documented == re.findall(r"^  (\d+) ", EXIT_STATUS, re.M) == ["0", "1", "2", "130"]
    assert EXIT_STATUS.count("\n  ") == 6


def _documented_options(command: str) -> dict[str, str]:
    """docs/cli.md's option table for ``ichlib COMMAND``: first option string -> default cell."""
    text = (ROOT / "docs" / "cli.md").read_text()
    section = re.search(rf"^## `ichlib {command}`$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, f"docs/cli.md has no section for ichlib {command}"
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]*) \|", section.group(1), re.M)
    return {cell.split(",")[0].split()[0]: default.strip() for cell, default in rows
            if cell not in ("option", "status")}


def test_docs_cli_lists_every_option_with_its_default():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    for name, sub in subparsers.choices.items():
        documented = _documented_options(name)
        expected = {}
        for action in sub._actions:
            if action.dest == "help":
                continue
            key = action.option_strings[0] if action.option_strings else action.dest.upper()
            default = action.default
            expected[key] = ("" if default is None or default is False else f"`{default}`")
        assert set(documented) == set(expected), name
        for key, default in expected.items():
            if documented[key] not in ("required", "this or `--submission`", "this or `--checkpoint`"):
                assert documented[key] == default, (name, key, documented[key], default)


# --- help ---------------------------------------------------------------------------------------

def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_every_option_has_help_and_defaults_are_shown(capsys):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    synth = _help(["synth"], capsys)
    assert "(default: 75)" in synth and "(default: 512)" in synth and "SYNTHETIC" in synth
    assert "generated (default: 0)" in synth
    train = _help(["train"], capsys)
    assert f"(default: {DEFAULT_WINDOWS})" in train and "(default: 0.001)" in train
    assert "worker processes (default: 0)" in train and "(default: off)" in train
    assert all(name in train for name in WINDOW_NAMES)
    predict = _help(["predict"], capsys)
    assert "DICOM series folders" in predict and ".series manifests" in predict
    assert "{" + ",".join(LABELS) + "}" in predict  # --cam-label lists its values


def test_window_names_match_the_library():
    assert WINDOW_NAMES == tuple(WINDOWS)
    from ichlib import rsna_submission

    assert IMAGE_SOURCES == rsna_submission.IMAGE_SOURCES
    assert DEFAULT_IMAGE_SOURCE == rsna_submission.DEFAULT_IMAGE_SOURCE
    assert DEFAULT_WINDOWS == "brain,subdural,bone"


def test_train_defaults_are_the_configs_except_the_design_windows(tmp_path):
    args = build_parser().parse_args(["train", "--data", "d", "--out", str(tmp_path / "r")])
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    from ichlib.cli import _TRAIN_OPTIONS

    for name in _TRAIN_OPTIONS:
        expected = DEFAULT_WINDOWS if name == "windows" else defaults[name]
        assert getattr(args, name) == expected, name
    assert TrainConfig(data_dir="d", out_dir="r", windows=args.windows).windows == ("brain", "subdural", "bone")


def test_help_does_not_import_torch():
    code = "import sys; from ichlib.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def _not_checkpoints(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Paths given as --checkpoint by mistake, and what the one error line must say."""
    (tmp / "history.csv").write_text("epoch,train_loss,val_loss\n1,0.7,0.6\n")
    (tmp / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (tmp / "empty.pt").write_bytes(b"")
    with zipfile.ZipFile(tmp / "whole.pt", "w") as archive:
        archive.writestr("whole/data.pkl", bytes(5000))
    (tmp / "truncated.pt").write_bytes((tmp / "whole.pt").read_bytes()[:3000])
    return {
        "missing": (tmp / "nope.pt", "checkpoint file not found"),
        "folder": (tmp, "is a directory, expected the checkpoint file"),
        "csv": (tmp / "history.csv", "the file is a CSV text file (first line 'epoch,train_loss,val_loss')"),
        "png": (tmp / "figure.png", "the file is a PNG image"),
        "empty": (tmp / "empty.pt", "the file is empty (0 bytes)"),
        "truncated_zip": (tmp / "truncated.pt", "a truncated or damaged zip archive"),
    }


_IN_A_NEW_PROCESS = ("import sys, time; start = time.perf_counter(); from ichlib.cli import main; "
                     "status = main(sys.argv[1:]); "
                     "print(status, 'torch' in sys.modules, time.perf_counter() - start)")


def _predict_in_a_new_process(argv: list[str]) -> tuple[int, bool, float, str, float]:
    """Exit status, whether torch was imported, seconds inside Python and wall seconds of
    ``ichlib predict ARGV`` in a new interpreter, and its stderr."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _IN_A_NEW_PROCESS, "predict", *argv],
                          capture_output=True, text=True, env=_env(), timeout=60)
    wall = time.perf_counter() - start
    status, torch_loaded, seconds = done.stdout.split()
    return int(status), torch_loaded == "True", float(seconds), done.stderr, wall


@pytest.mark.parametrize("case", ["missing", "folder", "csv", "png", "empty", "truncated_zip"])
def test_a_path_that_is_no_checkpoint_is_refused_before_torch_loads(case, tmp_path, small_ct_ich):
    path, problem = _not_checkpoints(tmp_path)[case]
    scan = small_ct_ich / "ct_scans" / "049.nii"
    status, torch_loaded, seconds, err, wall = _predict_in_a_new_process(
        ["--checkpoint", str(path), str(scan)])
    assert status == 1 and not torch_loaded and wall < 1.0, (seconds, wall)
    assert err.count("\n") == 1 and err.startswith(f"ichlib predict: error: {path}: ")
    assert problem in err


def test_a_missing_scan_is_refused_before_torch_loads(tmp_path):
    with zipfile.ZipFile(tmp_path / "best.pt", "w") as archive:  # shaped as torch.save's zip
        archive.writestr("best/data.pkl", bytes(100))
    missing = tmp_path / "no_such_scan.nii"
    status, torch_loaded, _, err, wall = _predict_in_a_new_process(
        ["--checkpoint", str(tmp_path / "best.pt"), str(missing)])
    assert status == 1 and not torch_loaded and wall < 1.0
    assert err == f"ichlib predict: error: {missing}: scan not found\n"


def test_a_missing_scan_among_good_ones_is_reported_and_the_others_predicted(tmp_path, small_ct_ich,
                                                                              capsys):
    from tests.test_checkpoint import make_checkpoint

    _, checkpoint = make_checkpoint(tmp_path / "best.pt")
    good, missing = small_ct_ich / "ct_scans" / "049.nii", tmp_path / "typo.nii"
    status = main(["predict", "--checkpoint", str(checkpoint), "--json", "--fp32", str(missing), str(good)])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert status == 1 and [p["path"] for p in doc["predictions"]] == [str(good)]
    assert doc["errors"] == [{"path": str(missing), "error": f"{missing}: scan not found"}]
    assert err == f"ichlib predict: error: {missing}: scan not found\n"


def test_warnings_are_one_line_each(tmp_path, capsys, monkeypatch):
    import warnings

    def warn(args):
        warnings.warn("something to know", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr("ichlib.cli._cmd_check", warn)
    assert main(["check", str(tmp_path)]) == 0
    assert capsys.readouterr().err == "ichlib check: warning: something to know\n"


# --- Ctrl-C during training, and no progress bars in a redirected log ---------------------------

def _train_argv(data: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "ichlib", "train", "--data", str(data), "--out", str(out),
            "--epochs", str(epochs), "--batch-size", "2", "--img-size", "32", "--seq-len", "4",
            "--n-boot", "5", "--amp", "off", "--device", "cpu", "--windows", "brain",
            "--cache-dir", str(out.parent / "cache")]


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def test_an_interrupted_command_exits_130_with_one_line(tmp_path, capsys, monkeypatch):
    from ichlib.errors import RunInterrupted

    def interrupted(config, **kwargs):
        raise RunInterrupted("interrupted; run/last.pt holds epoch 2 of 9. Run the same command "
                             "with --resume to continue from there.")

    monkeypatch.setattr("ichlib.training.fit.fit", interrupted)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert err.endswith("ichlib train: interrupted; run/last.pt holds epoch 2 of 9. Run the same "
                        "command with --resume to continue from there.\n")
    monkeypatch.setattr("ichlib.cli._cmd_check", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["check", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "ichlib check: interrupted\n"


@pytest.mark.slow
def test_ctrl_c_stops_training_cleanly_and_says_how_to_resume(tmp_path):
    data = write_ct_ich(tmp_path / "ds", {49 + i: labels_with(5, (i % 5) if i % 2 else None, 1, 3)
                                          for i in range(12)}, size=32)
    run = tmp_path / "run"
    # A shell's background job (`make test &`) starts with SIGINT ignored, and a child inherits
    # that, so Python would install no Ctrl-C handler: give the run the terminal's default.
    proc = subprocess.Popen(_train_argv(data, run, epochs=200), env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for(run / "last.pt", proc)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "\r" not in err and "it/s" not in err  # no bars in a log
    match = re.search(r"^ichlib train: interrupted; (.+) holds epoch (\d+) of 200\. Run the same "
                      r"command with --resume to continue from there\.$", err, re.M)
    assert match, err
    assert Path(match.group(1)) == run / "last.pt"
    assert load_checkpoint(run / "last.pt")["epoch"] == int(match.group(2)) >= 1
    assert not (run / ".ichlib-run.lock").exists() and not (run / "metrics.json").exists()
    assert "epoch 1/200" in out


def test_check_json_has_ok_and_counts(small_ct_ich, capsys):
    assert main(["check", str(small_ct_ich), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    counts = doc["counts"]
    assert counts["patients"] == 4 and counts["slices"] == 6 + 8 + 5 + 3 and counts["problems"] == 0
    assert counts["positive_patients"]["epidural"] == 1 and counts["positive_slices"]["epidural"] == 2
    assert counts["positive_patients"]["any"] == 2 and set(counts["positive_slices"]) == set(LABELS)
    (small_ct_ich / "masks" / "052.nii").unlink()
    assert main(["check", str(small_ct_ich), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["counts"]["problems"] == 1 and doc["counts"]["patients"] == 3
