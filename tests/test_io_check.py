import json

import nibabel as nib
import numpy as np

from ichlib.cli import main
from ichlib.io.check import check_dataset
from ichlib.labels import LABELS


def test_clean_folder(small_ct_ich):
    report = check_dataset(small_ct_ich)
    assert report.ok
    text = report.summary()
    assert "patients: 4" in text and "slices: 22" in text and "No problems found." in text


def test_every_problem_is_listed_not_just_the_first(small_ct_ich):
    (small_ct_ich / "ct_scans" / "049.nii").write_bytes(b"")
    affine = nib.load(small_ct_ich / "ct_scans" / "050.nii").affine  # on its mask's grid
    nib.save(nib.Nifti1Image(np.full((32, 32, 8), np.nan, np.float32), affine),
             small_ct_ich / "ct_scans" / "050.nii")  # header fine, voxels bad: deep check finds it
    csv = small_ct_ich / "hemorrhage_diagnosis_raw_ct.csv"
    csv.write_text(csv.read_text().replace("52,2,0,0,0,0,0,1,0", "52,2,0,0,0,0,0,7,0"))
    report = check_dataset(small_ct_ich)
    assert not report.ok
    assert {p.patient_id for p in report.problems} == {"049", "050", "052"}
    assert list(report.data.patients.index) == ["051"]
    quick = check_dataset(small_ct_ich, deep=False)
    assert {p.patient_id for p in quick.problems} == {"049", "052"}


def test_cli_check_exit_status_and_json(small_ct_ich, capsys):
    assert main(["check", str(small_ct_ich), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["problems"] == []
    assert out["patients"]["050"] == {"n_slices": 8, **{lab: int(lab in ("any", "epidural")) for lab in LABELS}}
    (small_ct_ich / "masks" / "052.nii").unlink()
    assert main(["check", str(small_ct_ich)]) == 1
    text = capsys.readouterr().out
    assert "1 problem(s)" in text and "052.nii: mask not found" in text


def test_cli_check_on_a_missing_folder(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope")]) == 1
    assert "not found" in capsys.readouterr().out


def test_check_detects_an_rsna_folder(tmp_path, capsys, monkeypatch):
    import warnings

    monkeypatch.setenv("ICHLIB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rsna"
    assert main(["synth", str(out), "--format", "rsna", "--patients", "2", "--size", "32",
                 "--workers", "1"]) == 0
    assert "RSNA layout" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic CSV repeats two images, like the real one
        assert check_dataset(out, deep=False).ok
        assert main(["check", str(out), "--json"]) == 0
        series = json.loads(capsys.readouterr().out)["patients"]
        assert len(series) == 3 and all(s["n_slices"] >= 24 for s in series.values())
        assert main(["check", str(out), "--format", "ct-ich"]) == 1
        assert "ct_scans" in capsys.readouterr().out
