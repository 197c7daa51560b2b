"""The CNN + BiLSTM of Burduja et al. (Sensors 2020): a slice encoder, then a sequence model.

Every slice of a scan ``[S, C, H, W]`` goes through a ResNet trunk to a pooled embedding.
A linear *slice head* predicts the six labels for each slice from its embedding (the
auxiliary task). A bidirectional LSTM reads the embeddings in slice order and gives an
output at every slice; the *scan head* turns each into six patient-level logits, and a
pooling over the slices (:data:`POOLINGS`) makes them one prediction per scan. Columns
follow :data:`ichlib.labels.LABELS`.

Pooling. ``"max"`` (the default) takes, per label, the largest of the per-slice
patient-level logits: the paper's code predicts every slice and takes the maximum.
``"mean"`` averages them, ``"attention"`` weighs the BiLSTM outputs by a learned softmax
over the slices. ``"last"`` reads only the final states of the two directions (after the
last slice forward, after the first slice backward), as this model did before; it is kept
as an ablation. In an untrained model it sends about 14x more gradient to the first and
last slices than to the middle ones (skull base and vertex, where blood is rare), and
trained end to end it did not learn the scan labels in the course budget (notebook 04).

The LSTM reads layer-normalised embeddings (``lstm_norm``). ResNet embeddings come out of a
ReLU and average pooling: all positive, with a large offset shared by every slice. Fed raw,
the LSTM learned nothing beyond the label prevalence on the synthetic phantom, even in 30
epochs and on frozen embeddings; after a LayerNorm it fits the training scans in a few
hundred steps.

Several sequence halves. A model may hold ``sequence_members`` sequence halves (LayerNorm,
BiLSTM, scan head) over the one CNN. Each reads the same embeddings; the model's scan
probability is the *mean of their probabilities* (:func:`mean_probability_logit`). The
two-stage recipe trains them one after another on cached embeddings, each with its own
seed and its own epoch chosen on validation: one run of stage 2 is noisy enough on a small
validation set that its epoch, and the test verdict, move with float-level changes
(docs/results.md), and an average of several is the usual cure. Member 0 is the model's
own ``lstm_norm``, ``lstm``, ``scan_head`` (and ``attention``), so a one-member model and
its checkpoints are as before; members 1.. live in ``extra_sequences``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ichlib import resnet
from ichlib.errors import ConfigError, IchlibError
from ichlib.labels import LABELS

#: How the per-slice BiLSTM outputs become one prediction per scan (see the module docstring).
POOLINGS = ("max", "mean", "attention", "last")
#: The pooling of new models. Checkpoints written before pooling was configurable used "last".
DEFAULT_POOLING = "max"

#: How :meth:`CNNBiLSTM.forward_scan` combines the patient-level logits of several samplings.
COMBINES = ("max", "mean", "all")

#: Supported backbones: constructor (:mod:`ichlib.resnet`, torchvision's layout without
#: importing torchvision), torchvision's ImageNet weights enum name, embedding size.
BACKBONES: dict[str, tuple[Callable[..., resnet.ResNet], str, int]] = {
    "resnet18": (resnet.resnet18, "ResNet18_Weights", 512),
    "resnet34": (resnet.resnet34, "ResNet34_Weights", 512),
    "resnet50": (resnet.resnet50, "ResNet50_Weights", 2048),
}


class ModelOutput(NamedTuple):
    """Logits of :class:`CNNBiLSTM` (apply a sigmoid for probabilities).

    Attributes:
        scan_logits: ``[B, 6]`` patient-level logits, columns as LABELS.
        slice_logits: ``[B, S, 6]`` per-slice logits of the auxiliary head.
    """

    scan_logits: torch.Tensor
    slice_logits: torch.Tensor


def mean_probability_logit(logits: torch.Tensor) -> torch.Tensor:
    """The logit of the mean probability over the first dimension: ``logit(mean_k sigmoid(x_k))``.

    Computed in log space (``log mean p - log mean (1 - p)``), so it is finite for any
    finite logits. One row is returned unchanged.
    """
    if logits.shape[0] == 1:
        return logits[0]
    log_p = torch.logsumexp(F.logsigmoid(logits), dim=0)
    log_q = torch.logsumexp(F.logsigmoid(-logits), dim=0)
    return log_p - log_q


class SequenceHalf(nn.Module):
    """One extra sequence half: LayerNorm, BiLSTM, scan head (and attention scorer).

    Built exactly as :class:`CNNBiLSTM` builds its own (member 0); see its arguments.
    """

    def __init__(self, feature_dim: int, n_labels: int, lstm_hidden: int, lstm_layers: int,
                 dropout: float, attention: bool) -> None:
        super().__init__()
        self.lstm_norm = nn.LayerNorm(feature_dim)
        self.lstm = nn.LSTM(feature_dim, lstm_hidden, num_layers=lstm_layers, batch_first=True,
                            bidirectional=True, dropout=dropout if lstm_layers > 1 else 0.0)
        self.scan_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * lstm_hidden, n_labels))
        self.attention = nn.Linear(2 * lstm_hidden, 1) if attention else None


class CNNBiLSTM(nn.Module):
    """ResNet slice encoder + bidirectional LSTM over the slices of a scan.

    Args:
        backbone: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"`` (torchvision).
        in_channels: Input channels ``C`` (1 for the brain window, 3 for brain/subdural/soft).
        n_labels: Outputs per head (6: ``any`` and the five subtypes).
        lstm_hidden: Hidden size of each LSTM direction.
        lstm_layers: Stacked LSTM layers.
        dropout: Dropout before both heads (and between stacked LSTM layers).
        pretrained: Start the trunk from torchvision's ImageNet weights; the first
            convolution is adapted to ``in_channels`` (see :func:`adapt_first_conv`).
            Raises :class:`~ichlib.errors.IchlibError` if the weights cannot be had.
        pooling: How the slices' outputs become the scan's: one of :data:`POOLINGS`.
        sequence_members: Sequence halves over the CNN; the scan probability is the mean of
            theirs (see the module docstring). Members 1.. are initialised from a fork of
            the global random state, so adding them changes no other weight and no later
            random draw.

    Attributes:
        encoder: The ResNet trunk with ``fc`` removed: ``[N, C, H, W] -> [N, F]``.
        slice_head: ``F -> n_labels``.
        lstm_norm: LayerNorm of each embedding before the LSTM.
        lstm: Bidirectional, batch-first, over the ``S`` embeddings in slice order.
        scan_head: Dropout + linear from ``2 * lstm_hidden`` to ``n_labels``, applied to the
            BiLSTM output of each slice (``"max"``, ``"mean"``), to the attention-weighted
            sum of them, or to the final states (``"last"``).
        attention: Linear ``2 * lstm_hidden -> 1`` scoring each slice (``"attention"``
            only; None otherwise).
        extra_sequences: Members 1.. of the sequence halves (:class:`SequenceHalf`).
        model_config: The constructor arguments as a plain dict (stored in checkpoints).
    """

    def __init__(self, backbone: str = "resnet18", in_channels: int = 1, n_labels: int = len(LABELS),
                 lstm_hidden: int = 256, lstm_layers: int = 1, dropout: float = 0.3,
                 pretrained: bool = False, pooling: str = DEFAULT_POOLING, sequence_members: int = 1) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if in_channels < 1 or n_labels < 1 or lstm_hidden < 1 or lstm_layers < 1:
            raise ConfigError("in_channels, n_labels, lstm_hidden and lstm_layers must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        if sequence_members < 1:
            raise ConfigError(f"sequence_members must be >= 1, got {sequence_members}")
        self.model_config = {
            "backbone": backbone, "in_channels": int(in_channels), "n_labels": int(n_labels),
            "lstm_hidden": int(lstm_hidden), "lstm_layers": int(lstm_layers),
            "dropout": float(dropout), "pooling": pooling, "sequence_members": int(sequence_members),
        }
        self.pooling = pooling
        self.encoder, self.feature_dim = _build_encoder(backbone, in_channels, pretrained)
        self.dropout = nn.Dropout(dropout)
        self.slice_head = nn.Linear(self.feature_dim, n_labels)
        self.lstm_norm = nn.LayerNorm(self.feature_dim)
        self.lstm = nn.LSTM(self.feature_dim, lstm_hidden, num_layers=lstm_layers, batch_first=True,
                            bidirectional=True, dropout=dropout if lstm_layers > 1 else 0.0)
        self.scan_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * lstm_hidden, n_labels))
        self.attention = nn.Linear(2 * lstm_hidden, 1) if pooling == "attention" else None
        with torch.random.fork_rng(devices=[]):
            self.extra_sequences = nn.ModuleList(
                SequenceHalf(self.feature_dim, n_labels, lstm_hidden, lstm_layers, dropout, pooling == "attention")
                for _ in range(sequence_members - 1))

    @property
    def sequence_members(self) -> int:
        """How many sequence halves the model averages (1: the design's single BiLSTM)."""
        return 1 + len(self.extra_sequences)

    @property
    def target_layer(self) -> nn.Module:
        """The CNN's last residual block (``encoder.layer4[-1]``), the Grad-CAM target.

        A property rather than a submodule, so the block's weights appear once in the
        state dict.
        """
        return self.encoder.layer4[-1]

    def cam_layer(self, name: str) -> nn.Module:
        """The last block of a ResNet stage by name (``"layer1"`` .. ``"layer4"``), for Grad-CAM.

        Raises:
            ConfigError: On another name.
        """
        if name not in ("layer1", "layer2", "layer3", "layer4"):
            raise ConfigError(f"unknown CAM layer {name!r}; choose layer1, layer2, layer3 or layer4")
        return getattr(self.encoder, name)[-1]

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Predict from a batch of slice sequences.

        Args:
            x: ``[B, S, C, H, W]`` windowed slices in [0, 1], slices in scan order.

        Returns:
            :class:`ModelOutput` with float32 ``scan_logits [B, 6]`` and
            ``slice_logits [B, S, 6]``, also under autocast (the LSTM and heads run in
            float32; only the CNN runs in reduced precision).
        """
        if x.ndim != 5:
            raise ConfigError(f"expected input [B, S, C, H, W], got shape {tuple(x.shape)}")
        b, s = x.shape[:2]
        embeddings = self.embed(x.reshape(b * s, *x.shape[2:])).reshape(b, s, -1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            embeddings = embeddings.float()
            slice_logits = self.slice_head(self.dropout(embeddings))
            scan_logits = self.sequence_logits(embeddings)
        return ModelOutput(scan_logits=scan_logits, slice_logits=slice_logits)

    def forward_scan(self, slices: torch.Tensor, samplings: torch.Tensor | np.ndarray,
                     combine: str = "max") -> ModelOutput:
        """Predict one whole scan from every one of its slices.

        The CNN embeds each of the ``N`` slices once. The sequence half then reads each row
        of ``samplings`` (e.g. :func:`ichlib.sampling.covering_indices`: interleaved
        samplings of ``S`` slices, spaced as in training, that together cover every slice),
        and the patient-level logits of the samplings are combined. With max pooling and
        ``combine="max"`` the result is the largest per-slice patient-level logit over all
        slices.

        Args:
            slices: ``[N, C, H, W]`` windowed slices of one scan, in scan order.
            samplings: ``[K, S]`` slice indices in ``[0, N)``, each row sorted.
            combine: ``"max"`` (per label, the largest of the ``K`` logits), ``"mean"``, or
                ``"all"`` (every sampling's logits, ``scan_logits [1, K, 6]``).

        Returns:
            :class:`ModelOutput` with ``scan_logits [1, 6]`` and the slice head's
            ``slice_logits [1, N, 6]`` for every slice (float32).
        """
        if slices.ndim != 4:
            raise ConfigError(f"expected one scan [N, C, H, W], got shape {tuple(slices.shape)}")
        if combine not in COMBINES:
            raise ConfigError(f"unknown combine {combine!r}; choose one of {', '.join(COMBINES)}")
        index = torch.as_tensor(np.asarray(samplings), dtype=torch.long, device=slices.device)
        if index.ndim != 2 or index.numel() == 0 or index.min() < 0 or index.max() >= slices.shape[0]:
            raise ConfigError(f"samplings must be [K, S] indices into the {slices.shape[0]} slices, "
                              f"got shape {tuple(index.shape)}")
        return self.heads_from_embeddings(self.embed(slices), index, combine)

    def heads_from_embeddings(self, embeddings: torch.Tensor, samplings: torch.Tensor | np.ndarray,
                              combine: str = "max") -> ModelOutput:
        """The second half of :meth:`forward_scan`: both heads from the CNN's embeddings
        ``[N, F]`` of one scan's slices (e.g. embeddings reused for a scan edited on a few
        slices). ``samplings`` and ``combine`` as for :meth:`forward_scan`."""
        index = (samplings.to(embeddings.device, torch.long) if isinstance(samplings, torch.Tensor)
                 else torch.as_tensor(np.asarray(samplings), dtype=torch.long, device=embeddings.device))
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            embeddings = embeddings.float()
            slice_logits = self.slice_head(self.dropout(embeddings))
            per_sampling = self.sequence_logits(embeddings[index])  # [K, 6]
            if combine == "all":
                return ModelOutput(scan_logits=per_sampling[None], slice_logits=slice_logits[None])
            scan = per_sampling.amax(dim=0) if combine == "max" else per_sampling.mean(dim=0)
        return ModelOutput(scan_logits=scan[None], slice_logits=slice_logits[None])

    def embed(self, slices: torch.Tensor) -> torch.Tensor:
        """Slice embeddings ``[N, F]`` of windowed slices ``[N, C, H, W]`` (the CNN alone)."""
        if self._channels_last():
            slices = slices.contiguous(memory_format=torch.channels_last)
        return self.encoder(slices)

    def sequence_logits(self, embeddings: torch.Tensor, member: int | None = None) -> torch.Tensor:
        """Patient-level logits ``[B, 6]`` from slice embeddings ``[B, S, F]`` in slice order.

        The sequence half of the model (LayerNorm, BiLSTM, scan head, pooling), in float32.
        The two-stage mode (:mod:`ichlib.two_stage`) trains it alone on cached embeddings.

        Args:
            embeddings: ``[B, S, F]``.
            member: One sequence half (0-based) alone; None: all of them, their
                probabilities averaged (:func:`mean_probability_logit`).
        """
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = embeddings.float()
            members = range(self.sequence_members) if member is None else [self._check_member(member)]
            return mean_probability_logit(torch.stack([self._member_logits(k, x) for k in members]))

    def sequence_slice_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Each position's patient-level logits ``[B, S, 6]`` before pooling (max or mean pooling
        only), the members' probabilities averaged: what the scan head says at each slice.

        Raises:
            ConfigError: If the pooling reads no per-slice outputs (``"last"``, ``"attention"``).
        """
        if self.pooling not in ("max", "mean"):
            raise ConfigError(f"{self.pooling!r} pooling has no per-slice sequence outputs")
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = embeddings.float()
            per_member = []
            for k in range(self.sequence_members):
                norm, lstm, head, _ = self._member(k)
                per_member.append(head(lstm(norm(x))[0]))
            return mean_probability_logit(torch.stack(per_member))

    def _member_logits(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``k``'s patient-level logits ``[B, 6]`` from float32 embeddings ``[B, S, F]``."""
        norm, lstm, head, attention = self._member(k)
        outputs, (h_n, _) = lstm(norm(x))
        if self.pooling == "last":
            # h_n: [layers * 2, B, hidden]; the last two rows are the top layer's forward
            # (after the last slice) and backward (after the first slice) states.
            return head(torch.cat([h_n[-2], h_n[-1]], dim=1))
        if self.pooling == "attention":
            weights = torch.softmax(attention(outputs), dim=1)  # [B, S, 1]
            return head((weights * outputs).sum(dim=1))
        per_slice = head(outputs)  # [B, S, 6]: each slice's patient-level logits
        return per_slice.amax(dim=1) if self.pooling == "max" else per_slice.mean(dim=1)

    def _member(self, k: int) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module | None]:
        """LayerNorm, BiLSTM, scan head and attention of sequence half ``k``."""
        half: nn.Module = self if k == 0 else self.extra_sequences[k - 1]
        return half.lstm_norm, half.lstm, half.scan_head, half.attention

    def _check_member(self, member: int) -> int:
        if not 0 <= member < self.sequence_members:
            raise ConfigError(f"member must be in 0..{self.sequence_members - 1}, got {member}")
        return member

    def sequence_modules(self, member: int | None = 0) -> list[nn.Module]:
        """The modules of a sequence half: LayerNorm, BiLSTM, scan head (and attention);
        ``member=None``: those of every member."""
        members = range(self.sequence_members) if member is None else [self._check_member(member)]
        return [m for k in members for m in self._member(k) if m is not None]

    def _channels_last(self) -> bool:
        # conv1's weight may have one input channel, which fits either layout; a 64-channel
        # weight of layer1 tells whether the model was moved to channels_last.
        weight = self.encoder.layer1[0].conv1.weight
        return not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)


def _build_encoder(backbone: str, in_channels: int = 1,
                  pretrained: bool = False) -> tuple[resnet.ResNet, int]:
    """A ResNet trunk (:mod:`ichlib.resnet`, torchvision's layout) with ``fc`` replaced by identity.

    Returns:
        The trunk (``[N, C, H, W] -> [N, F]``) and ``F``.

    Raises:
        ConfigError: On an unknown backbone.
        IchlibError: If ``pretrained`` and the ImageNet weights cannot be loaded.
    """
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    constructor, weights_name, feature_dim = BACKBONES[backbone]
    trunk = constructor()
    if pretrained:
        trunk.load_state_dict(_imagenet_state_dict(backbone))
    old = trunk.conv1
    conv1 = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                      padding=old.padding, bias=False)
    if pretrained:
        with torch.no_grad():
            conv1.weight.copy_(adapt_first_conv(old.weight, in_channels))
    trunk.conv1 = conv1
    trunk.fc = nn.Identity()
    return trunk, feature_dim


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt RGB first-layer filters ``[O, 3, k, k]`` to ``in_channels`` inputs.

    Three channels keep the RGB filters as they are. Any other count gets the mean of the
    RGB filters in every channel, scaled by ``3 / in_channels``, so an input that is the
    same in every channel produces the response an equally grey RGB image would (for one
    channel this is the sum of the RGB filters).
    """
    if in_channels == weight.shape[1]:
        return weight.clone()
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (weight.shape[1] / in_channels)


def _imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for ``backbone``, from the torch hub cache or the web.

    Raises:
        IchlibError: If they cannot be had (offline and not cached), saying how to fix it.
    """
    import torchvision  # lazy: about 1.8 s of imports (torch._dynamo), only for these weights

    weights = getattr(torchvision.models, BACKBONES[backbone][1]).IMAGENET1K_V1
    filename = weights.url.rsplit("/", 1)[-1]
    target = f"{torch.hub.get_dir()}/checkpoints/{filename}"
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True,
                                                  weights_only=True)
    except Exception as exc:  # URLError, HTTPError, timeouts, hash mismatch, bad file
        raise IchlibError(
            f"could not load the ImageNet weights for {backbone} ({type(exc).__name__}: {exc}). "
            f"On a machine with internet, download {weights.url} and copy it to {target} "
            "(or point TORCH_HOME at a folder holding hub/checkpoints/" + filename + "); "
            "or train from scratch with pretrained=False.") from exc
