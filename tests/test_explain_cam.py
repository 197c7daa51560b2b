"""Grad-CAM over a whole scan: checked against hand-computed maps and plain ``GradCAM``."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ichlib.errors import ConfigError, IchlibError
from ichlib.explain.cam import (
    ScanCAM,
    ScanLabelTarget,
    SliceLabelTarget,
    normalize_scan,
    scan_grad_cam,
    upsample_maps,
)
from ichlib.labels import LABELS, label_index
from tests.conftest import ToyBiLSTM

pytestmark = pytest.mark.usefixtures("one_thread")


class Out(NamedTuple):
    scan_logits: torch.Tensor
    slice_logits: torch.Tensor


class GapToy(nn.Module):
    """CNN -> global average pool -> linear per slice; the scan logit is the slice mean."""

    def __init__(self, channels: int = 6, bias: bool = True) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=bias), nn.ReLU(),
                                   nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=bias),
                                   nn.ReLU())
        self.head = nn.Linear(channels, len(LABELS), bias=bias)

    @property
    def target_layer(self) -> nn.Module:
        return self.trunk

    def forward(self, x: torch.Tensor) -> Out:
        b, s = x.shape[:2]
        a = self.trunk(x.flatten(0, 1))
        slice_logits = self.head(a.mean(dim=(2, 3))).view(b, s, -1)
        return Out(slice_logits.mean(dim=1), slice_logits)


class SumOfSlices(nn.Module):
    """Scan logit = sum over slices of a plain CNN's logits, so each slice's gradient is the CNN's."""

    def __init__(self, cnn: nn.Sequential) -> None:
        super().__init__()
        self.cnn = cnn

    @property
    def target_layer(self) -> nn.Module:
        return self.cnn[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[:2]
        return self.cnn(x.flatten(0, 1)).view(b, s, -1).sum(dim=1)


def plain_cnn() -> nn.Sequential:
    """A non-linear CNN with a non-linear head, so gradients depend on the input."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(),
        nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 6))


def scan_input(s: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(s, 1, size, size, generator=g)


def real_model(seed: int = 0) -> nn.Module:
    from ichlib.model import CNNBiLSTM

    torch.manual_seed(seed)
    return CNNBiLSTM("resnet18", in_channels=1, lstm_hidden=8)


# --- correctness ------------------------------------------------------------------------

def test_gap_linear_gradcam_equals_class_activation_map():
    torch.manual_seed(0)
    model = GapToy().eval()
    x = scan_input(s=3)
    label = "subarachnoid"
    result = scan_grad_cam(model, x, label, normalize=None)

    with torch.no_grad():
        a = model.trunk(x)                                          # [S, F, h, w]
        w = model.head.weight[label_index(label)]                   # [F]
        cam = torch.relu(torch.einsum("f,sfhw->shw", w, a)).numpy()
    s, h, wd = cam.shape
    # d(mean_s logit)/dA = w / (h * w * S): Grad-CAM is the CAM divided by a constant.
    np.testing.assert_allclose(result.raw * (h * wd * s), cam, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.importance, cam.mean(axis=(1, 2)) / (h * wd * s), rtol=1e-4)

    scan = scan_grad_cam(model, x, label)
    up = upsample_maps(cam, (16, 16))
    np.testing.assert_allclose(scan.maps, up / up.max(), atol=1e-5)
    per_slice = scan_grad_cam(model, x, label, normalize="slice")
    np.testing.assert_allclose(per_slice.maps, scale_cam_image(scale_cam_image(cam, (16, 16))),
                               atol=1e-5)


def test_same_maps_as_gradcam_on_a_plain_cnn():
    torch.manual_seed(1)
    cnn = plain_cnn().eval()
    x = scan_input(s=5, size=16, seed=3)
    label = "epidural"
    with GradCAM(cnn, [cnn[2]]) as direct:
        expected = direct(x, [ClassifierOutputTarget(label_index(label))] * len(x))
        one = direct(x[:1], [ClassifierOutputTarget(label_index(label))])
    ours = scan_grad_cam(SumOfSlices(cnn), x, label, normalize="slice")
    np.testing.assert_allclose(ours.maps, expected, atol=1e-5)
    # S = 1: a scan of one slice is the plain CNN on that slice.
    single = scan_grad_cam(SumOfSlices(cnn), x[:1], label, normalize="slice")
    np.testing.assert_allclose(single.maps, one, atol=1e-5)


def test_maps_through_the_bilstm_match_autograd_by_hand():
    torch.manual_seed(2)
    model = ToyBiLSTM(batchnorm=True, dropout=0.5).eval()
    x = scan_input(s=5)
    label = "intraventricular"
    result = scan_grad_cam(model, x, label)

    store = {}
    handle = model.target_layer.register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        score = model(x[None]).scan_logits[0, label_index(label)]
        (grad,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    a = store["a"].detach()
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1)).numpy()
    np.testing.assert_allclose(result.raw, cam, rtol=1e-4, atol=1e-7)
    assert result.probability == pytest.approx(torch.sigmoid(score).item(), rel=1e-5)


def test_gradient_reaches_every_slice_of_the_real_model():
    model = real_model()
    x = scan_input(s=4, size=64, seed=1)
    result = scan_grad_cam(model, x, "any")
    assert result.maps.shape == (4, 64, 64)
    assert (result.importance > 0).all(), result.importance
    assert all(result.maps[s].max() > 0 for s in range(4))
    # and independently of grad-cam: the patient score depends on every slice's pixels
    xg = x.clone().requires_grad_(True)
    model.eval()
    model(xg[None]).scan_logits[0, 0].backward()
    assert (xg.grad.abs().sum(dim=(1, 2, 3)) > 0).all()


def test_slice_target_explains_only_its_slice():
    model = real_model(seed=3)
    x = scan_input(s=4, size=64, seed=2)
    results = [scan_grad_cam(model, x, SliceLabelTarget(2, label)) for label in LABELS]
    assert [(r.head, r.slice_pos, r.label) for r in results] == [("slice", 2, t) for t in LABELS]
    # the slice head sees one slice's embedding (BatchNorm in eval mode): no other slice matters
    assert all(np.all(r.raw[[0, 1, 3]] == 0) for r in results)
    assert any(r.raw[2].max() > 0 for r in results)   # ReLU may zero a label with negative evidence
    with torch.no_grad():
        logits = model.eval()(x[None]).slice_logits[0, 2]
    np.testing.assert_allclose([r.probability for r in results], torch.sigmoid(logits).numpy(),
                               rtol=1e-5)
    assert scan_grad_cam(model, x, SliceLabelTarget(-1, "any")).slice_pos == 3


# --- normalisation ----------------------------------------------------------------------

def test_normalisation_modes():
    torch.manual_seed(4)
    model = ToyBiLSTM(batchnorm=True, dropout=0.5)
    x = scan_input(s=4)
    raw = scan_grad_cam(model, x, "any", normalize=None)
    scan = scan_grad_cam(model, x, "any")
    per_slice = scan_grad_cam(model, x, "any", normalize="slice")
    assert scan.maps.max() == pytest.approx(1.0) and scan.maps.min() >= 0
    np.testing.assert_allclose(scan.maps, normalize_scan(raw.maps), atol=1e-6)
    # scan normalisation keeps the slices' ratios; the library's makes every slice peak at 1
    peaks = raw.maps.max(axis=(1, 2))
    np.testing.assert_allclose(scan.maps.max(axis=(1, 2)), peaks / peaks.max(), rtol=1e-4)
    np.testing.assert_allclose(per_slice.maps.max(axis=(1, 2))[peaks > 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(scan.importance, per_slice.importance)
    with pytest.raises(ConfigError):
        scan_grad_cam(model, x, "any", normalize="volume")


def test_constant_input_gives_zero_map_not_nan():
    torch.manual_seed(5)
    model = GapToy(bias=False)
    for mode in ("scan", "slice", None):
        result = scan_grad_cam(model, torch.zeros(3, 1, 16, 16), "any", normalize=mode)
        assert np.isfinite(result.maps).all()
        assert not result.maps.any() and not result.importance.any()
    # the real model: padding makes a constant slice's features non-constant, but nothing is NaN
    result = scan_grad_cam(real_model(), torch.full((3, 1, 64, 64), 0.5), "any")
    assert np.isfinite(result.maps).all() and 0 <= result.maps.min() and result.maps.max() <= 1


def test_normalize_scan_guards_zero_and_constant():
    assert not normalize_scan(np.zeros((2, 4, 4))).any()
    assert not np.isnan(normalize_scan(np.full((2, 4, 4), 1e-30))).any()
    m = np.full((2, 2, 2), 1.0, np.float32)
    m[1, 0, 0] = 4.0
    np.testing.assert_allclose(normalize_scan(m), m / 4)     # one max, no offset: ratios kept


# --- state, targets, errors -------------------------------------------------------------

def test_train_mode_requires_grad_and_grads_are_restored():
    torch.manual_seed(6)
    model = ToyBiLSTM(batchnorm=True, dropout=0.5).train()
    model.encoder[1].eval()                    # a mixed state must come back as it was
    model.slice_head.weight.requires_grad_(False)
    model.scan_head.weight.grad = torch.ones_like(model.scan_head.weight)
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = [p.detach().clone() for p in model.parameters()]
    running = model.encoder[1].running_mean.clone()

    scan_grad_cam(model, scan_input(), "subdural")

    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert torch.equal(model.scan_head.weight.grad, torch.ones_like(model.scan_head.weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "scan_head.weight")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.equal(model.encoder[1].running_mean, running)   # ran in eval mode


def test_works_under_no_grad_and_inference_mode():
    torch.manual_seed(7)
    model = ToyBiLSTM(batchnorm=True, dropout=0.5)
    x = scan_input()
    expected = scan_grad_cam(model, x, "any").maps
    with torch.no_grad():
        np.testing.assert_allclose(scan_grad_cam(model, x, "any").maps, expected)
    with torch.inference_mode():
        xi = x.clone()
        np.testing.assert_allclose(scan_grad_cam(model, xi, "any").maps, expected)


def test_targets_by_name_top_label_and_errors():
    torch.manual_seed(8)
    model = ToyBiLSTM(batchnorm=True, dropout=0.5)
    x = scan_input()
    with torch.no_grad():
        logits = model.eval()(x[None]).scan_logits[0]
    top = scan_grad_cam(model, x, None)
    assert top.label == LABELS[int(logits.argmax())]
    assert top.probability == pytest.approx(float(torch.sigmoid(logits).max()), rel=1e-5)
    np.testing.assert_allclose(top.probabilities, torch.sigmoid(logits).numpy(), rtol=1e-5)
    named = scan_grad_cam(model, x, ScanLabelTarget(top.label))
    np.testing.assert_allclose(named.maps, top.maps)
    five_d = scan_grad_cam(model, x[None], top.label, slice_indices=[0, 3, 6, 9])
    np.testing.assert_allclose(five_d.maps, top.maps)
    np.testing.assert_array_equal(five_d.slice_indices, [0, 3, 6, 9])
    assert list(five_d.top_slices(2)) == list(np.argsort(-five_d.importance, kind="stable")[:2])

    with pytest.raises(KeyError, match="subdural"):
        scan_grad_cam(model, x, "subdura")
    with pytest.raises(ConfigError):
        scan_grad_cam(model, x, SliceLabelTarget(4, "any"))
    with pytest.raises(ConfigError):
        scan_grad_cam(model, x[0], "any")
    with pytest.raises(ConfigError):
        scan_grad_cam(model, x, "any", slice_indices=[0, 1])


def test_refuses_a_model_that_runs_the_cnn_slice_by_slice():
    class Looping(ToyBiLSTM):
        def forward(self, x):
            e = torch.stack([self.encoder(x[:, s]) for s in range(x.shape[1])], dim=1)
            _, (h, _) = self.lstm(e)
            return Out(self.scan_head(torch.cat([h[-2], h[-1]], 1)), self.slice_head(e))

    with pytest.raises(IchlibError, match="once on all"):
        scan_grad_cam(Looping(), scan_input(), "any")


def test_result_is_a_small_dataclass():
    result = scan_grad_cam(ToyBiLSTM(batchnorm=True, dropout=0.5), scan_input(s=3), "any")
    assert isinstance(result, ScanCAM)
    assert result.maps.dtype == np.float32 and result.importance.shape == (3,)
    assert result.raw.shape == (3, 8, 8) and result.normalize == "scan" and result.head == "scan"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_lstm_backward_in_eval_mode():
    model = real_model().cuda()
    result = scan_grad_cam(model, scan_input(s=4, size=64).cuda(), "any")
    assert np.isfinite(result.maps).all() and result.maps.max() == pytest.approx(1.0)
    assert torch.backends.cudnn.enabled


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcam++", "layercam"])
def test_every_method_gives_a_map_per_slice_of_the_real_model(method):
    model = real_model().eval()
    result = scan_grad_cam(model, scan_input(s=4, size=64), "any", method=method,
                           target_layer="layer3")
    assert result.maps.shape == (4, 64, 64) and result.raw.shape == (4, 4, 4)   # layer3: stride 16
    assert np.isfinite(result.maps).all() and result.maps.max() == pytest.approx(1.0)


def test_a_fusion_of_layers_averages_their_scan_normalised_maps():
    model = real_model().eval()
    x = scan_input(s=3, size=64)
    three = scan_grad_cam(model, x, "any", target_layer="layer3", normalize=None)
    four = scan_grad_cam(model, x, "any", target_layer="layer4", normalize=None)
    fused = scan_grad_cam(model, x, "any", target_layer=["layer3", "layer4"], normalize=None)
    expected = (normalize_scan(upsample_maps(three.raw, (64, 64)))
                + normalize_scan(upsample_maps(four.raw, (64, 64)))) / 2
    np.testing.assert_allclose(fused.raw, expected, atol=1e-6)
    with pytest.raises(ConfigError, match="unknown CAM"):
        scan_grad_cam(model, x, "any", method="eigencam")
    with pytest.raises(ConfigError, match="layer5"):
        scan_grad_cam(model, x, "any", target_layer="layer5")


def test_whole_scan_cam_explains_the_prediction_from_every_slice():
    from ichlib.explain.cam import whole_scan_grad_cam
    from ichlib.preprocess.sampling import covering_indices

    model = real_model().eval()
    x = scan_input(s=11, size=64)
    samplings = covering_indices(11, 4)          # 3 interleaved samplings of 4
    result = whole_scan_grad_cam(model, x, samplings, target_layer="layer3")
    assert result.maps.shape == (11, 64, 64) and list(result.slice_indices) == list(range(11))
    assert (result.maps.reshape(11, -1).max(axis=1) > 0).all()       # every slice has a map
    assert result.maps.max() == pytest.approx(1.0)
    with torch.inference_mode():
        whole = torch.sigmoid(model.forward_scan(x, samplings).scan_logits)[0].numpy()
    np.testing.assert_allclose(result.probabilities, whole, atol=1e-6)
    assert result.label == LABELS[int(np.argmax(whole))]
    # each slice's map is the one its own sampling gives
    row = samplings[1]
    part = scan_grad_cam(model, x[row], result.label, normalize=None, target_layer="layer3")
    np.testing.assert_allclose(result.raw[row], part.raw, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="covering"):
        whole_scan_grad_cam(model, x, samplings[:1])


# --- the grad-cam classes ---------------------------------------------------------------

@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcam++", "layercam"])
def test_each_method_is_a_named_subclass_of_grad_cams_class(method):
    import pytorch_grad_cam

    from ichlib.explain import cam as cam_module
    from ichlib.explain.cam import CAM_METHODS, ScanAsBatch

    cls = CAM_METHODS[method]
    library = {"gradcam": pytorch_grad_cam.GradCAM, "hirescam": pytorch_grad_cam.HiResCAM,
               "gradcam++": pytorch_grad_cam.GradCAMPlusPlus, "layercam": pytorch_grad_cam.LayerCAM}[method]
    assert issubclass(cls, library) and getattr(cam_module, cls.__name__) is cls
    assert cls.__module__ == "ichlib.explain.cam" and cls.__doc__
    # used the way grad-cam's classes are used, it gives what scan_grad_cam gives
    torch.manual_seed(5)
    model = ToyBiLSTM(downsamplings=2).eval()
    x = scan_input(s=3, size=32, seed=4)
    expected = scan_grad_cam(model, x, "epidural", method=method, normalize="slice")
    with cls(ScanAsBatch(model), [model.target_layer]) as cam:
        per_slice = cam(x, [ScanLabelTarget("epidural")])
    np.testing.assert_allclose(per_slice, expected.maps, atol=1e-6)
    assert len(cam.raw_cams) == 1
    np.testing.assert_allclose(cam.raw_cams[0], expected.raw, rtol=1e-5, atol=1e-8)
    assert not model.target_layer._forward_hooks          # the with block released grad-cam's hooks


def test_an_error_inside_the_with_block_is_not_swallowed():
    # grad-cam's own __exit__ prints an IndexError and swallows it; the scan classes let it through.
    from ichlib.explain.cam import ScanAsBatch, ScanGradCAM

    model = ToyBiLSTM().eval()
    with pytest.raises(IndexError):
        with ScanGradCAM(ScanAsBatch(model, "slice"), [model.target_layer]) as cam:
            cam(scan_input(s=3), [SliceLabelTarget(7, "any")])   # only 3 slices
    assert not model.target_layer._forward_hooks
