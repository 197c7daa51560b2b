"""CNNBiLSTM: shapes, slice order, the Grad-CAM contract, and ImageNet weights without network."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from ichlib.errors import ConfigError, IchlibError
from ichlib.labels import LABELS
from ichlib.model import (
    DEFAULT_POOLING,
    POOLINGS,
    CNNBiLSTM,
    ModelOutput,
    adapt_first_conv,
    mean_probability_logit,
)
from ichlib.preprocess.sampling import covering_indices

# Numbers that go through amp="auto": CI runs these again under ICHLIB_AMP=bf16.
pytestmark = pytest.mark.amp


@pytest.fixture(scope="module")
def models() -> dict[int, CNNBiLSTM]:
    torch.manual_seed(0)
    return {c: CNNBiLSTM(in_channels=c, lstm_hidden=16).eval() for c in (1, 3)}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("seq_len", [1, 7, 16])
def test_output_shapes(models, batch, seq_len, channels):
    x = torch.rand(batch, seq_len, channels, 32, 32)
    with torch.inference_mode():
        out = models[channels](x)
    assert isinstance(out, ModelOutput)
    assert out.scan_logits.shape == (batch, len(LABELS))
    assert out.slice_logits.shape == (batch, seq_len, len(LABELS))
    assert torch.isfinite(out.scan_logits).all() and torch.isfinite(out.slice_logits).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_gives_the_same_output(models, channels):
    model = models[channels]
    x = torch.rand(2, 7, channels, 32, 32)
    with torch.inference_mode():
        expected = model(x)
        fast = CNNBiLSTM(in_channels=channels, lstm_hidden=16).eval()
        fast.load_state_dict(model.state_dict())
        fast = fast.to(memory_format=torch.channels_last)
        got = fast(x)
    assert fast.encoder.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.scan_logits, expected.scan_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.slice_logits, expected.slice_logits, rtol=1e-4, atol=1e-5)


def test_slice_order_matters_for_the_scan_but_not_for_each_slice(models):
    model = models[1]
    x = torch.rand(1, 7, 1, 32, 32)
    with torch.inference_mode():
        forward = model(x)
        backward = model(x.flip(1))
    # The LSTM reads the sequence: reversing it changes the patient-level output...
    assert not torch.allclose(forward.scan_logits, backward.scan_logits, atol=1e-6)
    # ...while the slice head sees each slice alone.
    torch.testing.assert_close(backward.slice_logits, forward.slice_logits.flip(1), rtol=1e-4, atol=1e-5)


def test_contract_attributes():
    model = CNNBiLSTM(lstm_hidden=8, lstm_layers=2)
    assert model.target_layer is model.encoder.layer4[-1]
    assert isinstance(model.slice_head, torch.nn.Linear) and model.slice_head.in_features == 512
    assert model.lstm.bidirectional and model.lstm.batch_first
    assert isinstance(model.lstm_norm, torch.nn.LayerNorm) and model.lstm.input_size == 512
    # The scan head reads a BiLSTM output (both directions, concatenated) of each slice.
    linear = [m for m in model.scan_head.modules() if isinstance(m, torch.nn.Linear)]
    assert linear[-1].in_features == 2 * 8
    assert not any(k.startswith("target_layer") for k in model.state_dict())
    assert model.encoder(torch.rand(3, 1, 32, 32)).shape == (3, 512)
    assert model.model_config == {"backbone": "resnet18", "in_channels": 1, "n_labels": 6,
                                  "lstm_hidden": 8, "lstm_layers": 2, "dropout": 0.3,
                                  "pooling": DEFAULT_POOLING, "sequence_members": 1}
    assert model.attention is None and model.sequence_modules() == [model.lstm_norm, model.lstm,
                                                                    model.scan_head]


@pytest.mark.parametrize(("backbone", "features"), [("resnet34", 512), ("resnet50", 2048)])
def test_other_backbones(backbone, features):
    model = CNNBiLSTM(backbone=backbone, in_channels=3, lstm_hidden=8).eval()
    assert model.feature_dim == features
    with torch.inference_mode():
        out = model(torch.rand(1, 2, 3, 32, 32))
    assert out.scan_logits.shape == (1, 6)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown backbone"):
        CNNBiLSTM(backbone="vgg16")
    with pytest.raises(ConfigError, match="dropout"):
        CNNBiLSTM(dropout=1.0)
    with pytest.raises(ConfigError, match=r"\[B, S, C, H, W\]"):
        CNNBiLSTM()(torch.rand(2, 1, 32, 32))
    with pytest.raises(ConfigError, match="unknown pooling 'sum'"):
        CNNBiLSTM(pooling="sum")


def test_bf16_autocast_returns_float32_logits(models):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = models[1](torch.rand(1, 3, 1, 32, 32))
    assert out.scan_logits.dtype == torch.float32 and out.slice_logits.dtype == torch.float32


def test_pretrained_offline_raises_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(IchlibError, match="could not load the ImageNet weights for resnet18") as info:
        CNNBiLSTM(pretrained=True)
    message = str(info.value)
    assert "resnet18-" in message and "checkpoints" in message and "pretrained=False" in message


@pytest.mark.parametrize("channels", [1, 3])
def test_pretrained_weights_are_loaded_and_first_conv_adapted(monkeypatch, channels):
    torch.manual_seed(1)
    imagenet = torchvision.models.resnet18(weights=None).state_dict()
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return imagenet

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = CNNBiLSTM(in_channels=channels, pretrained=True)
    assert calls and calls[0][1].get("weights_only") is True
    torch.testing.assert_close(model.encoder.layer3[0].conv1.weight, imagenet["layer3.0.conv1.weight"])
    rgb = imagenet["conv1.weight"]
    expected = rgb if channels == 3 else rgb.sum(dim=1, keepdim=True)
    torch.testing.assert_close(model.encoder.conv1.weight, expected)


def test_adapt_first_conv_keeps_the_response_to_grey_input():
    weight = torch.randn(4, 3, 3, 3)
    grey = torch.rand(1, 1, 5, 5)
    rgb_response = torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), weight)
    for c in (1, 2, 4):
        adapted = adapt_first_conv(weight, c)
        assert adapted.shape == (4, c, 3, 3)
        torch.testing.assert_close(torch.nn.functional.conv2d(grey.repeat(1, c, 1, 1), adapted),
                                   rgb_response, rtol=1e-4, atol=1e-5)


# --- pooling over the slices ---------------------------------------------------------

def _pooled_by_hand(model: CNNBiLSTM, embeddings: torch.Tensor) -> torch.Tensor:
    """The scan logits of ``model.sequence_logits``, recomputed from the LSTM's outputs."""
    outputs, (h_n, _) = model.lstm(model.lstm_norm(embeddings))
    if model.pooling == "last":
        # forward direction after the last slice, backward direction after the first
        torch.testing.assert_close(h_n[-2], outputs[:, -1, :model.lstm.hidden_size])
        torch.testing.assert_close(h_n[-1], outputs[:, 0, model.lstm.hidden_size:])
        return model.scan_head(torch.cat([h_n[-2], h_n[-1]], dim=1))
    if model.pooling == "attention":
        scores = model.attention(outputs)[..., 0]  # [B, S]
        weights = scores.exp() / scores.exp().sum(dim=1, keepdim=True)
        return model.scan_head((weights[..., None] * outputs).sum(dim=1))
    per_slice = torch.stack([model.scan_head(outputs[:, t]) for t in range(outputs.shape[1])], dim=1)
    return per_slice.max(dim=1).values if model.pooling == "max" else per_slice.sum(dim=1) / outputs.shape[1]


@pytest.mark.parametrize("pooling", POOLINGS)
def test_each_pooling_matches_its_definition(pooling):
    torch.manual_seed(0)
    model = CNNBiLSTM(lstm_hidden=8, pooling=pooling).eval()
    assert model.model_config["pooling"] == pooling
    assert (model.attention is not None) == (pooling == "attention")
    embeddings = torch.randn(3, 5, 512)
    with torch.inference_mode():
        torch.testing.assert_close(model.sequence_logits(embeddings), _pooled_by_hand(model, embeddings))
        out = model(torch.rand(2, 5, 1, 32, 32))
    assert out.scan_logits.shape == (2, 6) and out.slice_logits.shape == (2, 5, 6)


def _gradient_profile(pooling: str, seeds: int = 5, n_scans: int = 64, seq_len: int = 16) -> torch.Tensor:
    """Mean gradient norm of the scan loss w.r.t. each slice position's embedding, in
    untrained models (each seed's profile scaled to mean 1, then averaged over seeds)."""
    profile = torch.zeros(seq_len)
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = CNNBiLSTM(pooling=pooling).eval()
        # ResNet embeddings are non-negative with an offset shared by all slices
        embeddings = (torch.randn(n_scans, seq_len, model.feature_dim).relu() + 1.0).requires_grad_(True)
        logits = model.sequence_logits(embeddings)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)).backward()
        grad = embeddings.grad.norm(dim=2).mean(dim=0)
        profile += grad / grad.mean()
    return profile / seeds


def test_last_state_pooling_favours_the_end_slices():
    # The ablation: most of the scan loss's gradient reaches the first and last slices.
    profile = _gradient_profile("last")
    ends, middle = profile[[0, -1]].mean(), profile[4:12].mean()
    assert ends / middle > 8 and profile.max() / profile.min() > 8


@pytest.mark.parametrize("pooling", ["max", "mean", "attention"])
def test_pooling_over_slices_spreads_the_gradient_evenly(pooling):
    profile = _gradient_profile(pooling)
    assert profile.max() / profile.min() < 2.0, profile


# --- a whole scan -----------------------------------------------------------------------

@pytest.mark.parametrize("pooling", POOLINGS)
def test_forward_scan_combines_covering_samplings(pooling):
    torch.manual_seed(0)
    model = CNNBiLSTM(lstm_hidden=8, pooling=pooling).eval()
    slices = torch.rand(21, 1, 32, 32)
    samplings = covering_indices(21, 8)  # 3 samplings of 8 slices
    index = torch.from_numpy(samplings)
    with torch.inference_mode():
        whole = model.forward_scan(slices, samplings)
        each = model(slices[index])  # the samplings as a batch of 3 sequences
        mean = model.forward_scan(slices, samplings, combine="mean")
        single = model(slices[None])
    assert whole.scan_logits.shape == (1, 6) and whole.slice_logits.shape == (1, 21, 6)
    torch.testing.assert_close(whole.scan_logits[0], each.scan_logits.max(dim=0).values, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mean.scan_logits[0], each.scan_logits.mean(dim=0), rtol=1e-4, atol=1e-5)
    # the slice head reads every slice once, independently of the samplings
    torch.testing.assert_close(whole.slice_logits, single.slice_logits, rtol=1e-4, atol=1e-5)


def test_forward_scan_refuses_bad_samplings():
    model = CNNBiLSTM(lstm_hidden=8).eval()
    slices = torch.rand(5, 1, 32, 32)
    with pytest.raises(ConfigError, match="samplings"):
        model.forward_scan(slices, [[0, 1, 5]])
    with pytest.raises(ConfigError, match="samplings"):
        model.forward_scan(slices, [0, 1, 2])
    with pytest.raises(ConfigError, match="combine"):
        model.forward_scan(slices, [[0, 1, 2]], combine="median")
    with pytest.raises(ConfigError, match=r"\[N, C, H, W\]"):
        model.forward_scan(slices[None], [[0, 1, 2]])


# --- several sequence halves ------------------------------------------------------------

def test_mean_probability_logit_is_the_logit_of_the_mean_probability():
    logits = torch.tensor([[-2.0, 0.0, 3.0], [1.0, 0.5, -4.0], [0.2, -0.3, 2.5]], dtype=torch.float64)
    p = torch.sigmoid(logits).mean(dim=0)
    torch.testing.assert_close(mean_probability_logit(logits), torch.log(p / (1 - p)))
    assert torch.equal(mean_probability_logit(logits[:1]), logits[0])
    # far past where sigmoid rounds to 0 or 1 in float32, it stays finite and ordered
    extreme = mean_probability_logit(torch.tensor([[200.0, -200.0], [150.0, -300.0]]))
    assert torch.isfinite(extreme).all() and extreme[0] > 100 and extreme[1] < -100


def test_extra_members_change_no_other_weight_and_no_later_random_draw():
    torch.manual_seed(3)
    one = CNNBiLSTM(lstm_hidden=8)
    after_one = torch.rand(4)
    torch.manual_seed(3)
    three = CNNBiLSTM(lstm_hidden=8, sequence_members=3)
    after_three = torch.rand(4)
    assert torch.equal(after_one, after_three)
    assert three.sequence_members == 3 and three.model_config["sequence_members"] == 3
    shared = three.state_dict()
    assert all(torch.equal(shared[k], v) for k, v in one.state_dict().items())
    # each member starts from its own weights
    w = [three.sequence_modules(k)[1].weight_ih_l0 for k in range(3)]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])


@pytest.mark.parametrize("pooling", POOLINGS)
def test_several_members_average_their_probabilities(pooling):
    torch.manual_seed(0)
    model = CNNBiLSTM(lstm_hidden=8, pooling=pooling, sequence_members=3).eval()
    embeddings = torch.randn(2, 5, 512)
    with torch.inference_mode():
        each = torch.stack([model.sequence_logits(embeddings, member=k) for k in range(3)])
        expected = torch.logit(torch.sigmoid(each.double()).mean(dim=0)).float()
        torch.testing.assert_close(model.sequence_logits(embeddings), expected, rtol=1e-4, atol=1e-5)
        out = model.forward_scan(torch.rand(6, 1, 32, 32), covering_indices(6, 3))
    assert not torch.allclose(each[0], each[1])
    assert out.scan_logits.shape == (1, 6) and torch.isfinite(out.scan_logits).all()
    with pytest.raises(ConfigError, match="member must be in 0..2"):
        model.sequence_logits(embeddings, member=3)
    with pytest.raises(ConfigError, match="sequence_members must be >= 1"):
        CNNBiLSTM(lstm_hidden=8, sequence_members=0)


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_per_slice_sequence_logits_pool_to_the_scan_logits(pooling):
    torch.manual_seed(1)
    model = CNNBiLSTM(lstm_hidden=8, pooling=pooling, sequence_members=2).eval()
    embeddings = torch.randn(2, 5, 512)
    with torch.inference_mode():
        per_member = []
        for k in range(2):
            norm, lstm, head = model.sequence_modules(k)
            per_member.append(head(lstm(norm(embeddings))[0]))  # [B, S, 6]
            pooled = per_member[k].amax(dim=1) if pooling == "max" else per_member[k].mean(dim=1)
            torch.testing.assert_close(pooled, model.sequence_logits(embeddings, member=k))
        torch.testing.assert_close(model.sequence_slice_logits(embeddings),
                                   mean_probability_logit(torch.stack(per_member)))
    with pytest.raises(ConfigError, match="no per-slice sequence outputs"):
        CNNBiLSTM(lstm_hidden=8, pooling="last").sequence_slice_logits(embeddings)
