from ichlib.course import course_paths, ensure_synthetic, repo_root
from ichlib.io.folder import is_synthetic


def test_defaults_are_under_the_repo_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = repo_root()
    assert (root / "pyproject.toml").exists()
    p = course_paths(None, tmp_path / "f", tmp_path / "r")
    assert p.data == root / "data" / "synthetic"
    assert p.figures.is_dir() and p.runs.is_dir() and p.cache == p.runs / "cache"


def test_ensure_synthetic_generates_once(tmp_path):
    target = tmp_path / "synth"
    ensure_synthetic(target, n_patients=2, size=32, seed=0)
    assert is_synthetic(target)
    stamp = (target / "synthetic.json").stat().st_mtime_ns
    ensure_synthetic(target, n_patients=2, size=32, seed=0)
    assert (target / "synthetic.json").stat().st_mtime_ns == stamp


def test_real_folders_are_not_synthetic(small_ct_ich):
    assert not is_synthetic(small_ct_ich)
