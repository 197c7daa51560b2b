"""ichlib.resnet against torchvision: same state-dict layout, same outputs, same seeded weights;
and the prediction path imports neither torchvision nor torch._dynamo (start-up time)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from ichlib import resnet
from ichlib.checkpoint import save_checkpoint
from ichlib.model import CNNBiLSTM
from ichlib.preprocess.dataset import PreprocessConfig
from tests.conftest import labels_with, write_ct_ich

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["resnet18", "resnet34", "resnet50"]
HEAVY = ("torchvision", "torch._dynamo")


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_shapes_are_torchvisions(name):
    ours = getattr(resnet, name)().state_dict()
    theirs = getattr(torchvision.models, name)(weights=None).state_dict()
    assert list(ours) == list(theirs)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert {k: v.dtype for k, v in ours.items()} == {k: v.dtype for k, v in theirs.items()}


@pytest.mark.parametrize("name", NAMES)
def test_torchvision_weights_give_the_same_output(name):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)(weights=None, num_classes=6)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for module in theirs.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    ours = getattr(resnet, name)(num_classes=6)
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs.eval()(x)
        got = ours.eval()(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_seeded_initialisation_equals_torchvisions(name):
    torch.manual_seed(3)
    theirs = getattr(torchvision.models, name)(weights=None).state_dict()
    torch.manual_seed(3)
    ours = getattr(resnet, name)().state_dict()
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)


def test_a_model_from_torchvisions_trunk_loads_into_ichlibs():
    # A checkpoint written when CNNBiLSTM's encoder was torchvision's ResNet.
    model = CNNBiLSTM(backbone="resnet34", lstm_hidden=8)
    old_trunk = torchvision.models.resnet34(weights=None)
    old_trunk.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    old_trunk.fc = torch.nn.Identity()
    state = {f"encoder.{k}": v for k, v in old_trunk.state_dict().items()}
    assert set(state) == {k for k in model.state_dict() if k.startswith("encoder.")}
    model.load_state_dict({**model.state_dict(), **state})
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.eval().embed(x), old_trunk.eval()(x), rtol=0, atol=1e-5)


def _loaded_modules(code: str, *args: str, **env: str) -> str:
    """The HEAVY modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"; import sys; print([m for m in {HEAVY!r} if m in sys.modules])"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    done = subprocess.run([sys.executable, "-c", code + probe, *args], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1]


def test_importing_the_model_imports_neither_torchvision_nor_dynamo():
    assert _loaded_modules("import ichlib.model, ichlib.predict, ichlib.device") == "[]"


def test_cli_predict_imports_neither_torchvision_nor_dynamo(tmp_path):
    data = write_ct_ich(tmp_path / "ds", {49: labels_with(4, None, 1, 2)}, size=32)
    model = CNNBiLSTM(lstm_hidden=8)
    config = PreprocessConfig(img_size=32, seq_len=4)
    checkpoint = save_checkpoint(tmp_path / "model.pt", {
        "model": model.state_dict(), "model_config": model.model_config,
        "preprocess": config.to_dict(), "data": "synthetic"})
    code = "import sys; from ichlib.cli import main; assert main(sys.argv[1:]) == 0"
    scan = str(data / "ct_scans" / "049.nii")
    # Empty caches: a CPU whose bf16 speed is measured times ichlib.resnet, not torchvision's.
    empty = {k: str(tmp_path / k.lower()) for k in ("HOME", "XDG_CACHE_HOME", "ICHLIB_CACHE")}
    assert _loaded_modules(code, "predict", "--checkpoint", str(checkpoint), scan, **empty) == "[]"
