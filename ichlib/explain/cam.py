"""Grad-CAM for a whole scan through the CNN + BiLSTM, using the ``grad-cam`` package.

``grad-cam`` explains one output per image of a batch. Here one scan's slices
``[S, C, H, W]`` are the "batch" and :class:`ScanAsBatch` returns the *patient-level*
logits ``[1, 6]``, so the gradient of the scan's score flows back through the BiLSTM into
the CNN features of every slice. The library then gives one map per slice from the CNN's
last block (``model.target_layer``):

- activations and gradients at the target layer are ``[S, F, h, w]``;
- :class:`~pytorch_grad_cam.GradCAM` averages each slice's gradient over ``h, w``, so
  slice ``s`` gets its own channel weights ``w[s, k] = mean_ij d score / d A[s, k, i, j]``
  and the map ``ReLU(sum_k w[s, k] A[s, k])``;
- exactly one target is passed, paired with the single output row.

Each method is ``grad-cam``'s own class with two of its hooks extended (:class:`_ScanMaps`):
:class:`ScanGradCAM`, :class:`ScanHiResCAM`, :class:`ScanGradCAMPlusPlus` and
:class:`ScanLayerCAM`, by name in :data:`CAM_METHODS`. Used directly, they work like the
library's classes on ``ScanAsBatch(model)``::

    with ScanGradCAM(ScanAsBatch(model), [model.target_layer]) as cam:
        per_slice = cam(x, [ScanLabelTarget("subdural")])   # [S, H, W]; cam.raw_cams[0]: [S, h, w]

The library scales each slice's map to [0, 1] on its own (min-max), which hides how much
a slice matters. :func:`scan_grad_cam` therefore keeps the un-normalised maps and, by
default, divides the whole scan by its one maximum (``normalize="scan"``), so a faint
slice stays faint. The library's own per-slice result is kept as ``normalize="slice"``.

On CUDA, cuDNN is off during the call (backward through an LSTM in eval mode fails with
it on). The model is used in eval mode; afterwards every submodule's train/eval flag and
every parameter's ``requires_grad`` and ``.grad`` are as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM
from pytorch_grad_cam.base_cam import BaseCAM
from torch import nn

from ichlib.errors import ConfigError, IchlibError
from ichlib.labels import LABELS, label_index
from ichlib.preprocess.resize import resize_slices

Normalize = Literal["scan", "slice"] | None
_NORMALIZE = ("scan", "slice", None)


# --- targets ----------------------------------------------------------------------------

class ScanLabelTarget:
    """The patient-level logit of one label, picked by name.

    Called by ``grad-cam`` with one scan's output row ``[6]`` (columns as
    :data:`~ichlib.labels.LABELS`); a ``[B, 6]`` input gives ``[B]``.

    Args:
        label: One of :data:`~ichlib.labels.LABELS`, e.g. ``"subdural"``.
    """

    head = "scan"

    def __init__(self, label: str) -> None:
        self.index = label_index(label)
        self.label = label

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output[..., self.index]

    def __repr__(self) -> str:
        return f"ScanLabelTarget({self.label!r})"


class SliceLabelTarget:
    """The slice head's logit of one label for one sampled slice.

    Called with one scan's slice logits ``[S, 6]``. The slice head is the auxiliary,
    per-slice classifier, so this explains "why does the model call *this* slice
    epidural" rather than the patient-level diagnosis.

    Args:
        slice_pos: Position in the sampled sequence, ``0 <= slice_pos < S`` (not the
            scan's slice index; negative values count from the end).
        label: One of :data:`~ichlib.labels.LABELS`.
    """

    head = "slice"

    def __init__(self, slice_pos: int, label: str) -> None:
        self.index = label_index(label)
        self.label = label
        self.slice_pos = int(slice_pos)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output[..., self.slice_pos, self.index]

    def __repr__(self) -> str:
        return f"SliceLabelTarget({self.slice_pos}, {self.label!r})"


class _TopScanLabelTarget(ScanLabelTarget):
    """The patient-level label with the highest logit, chosen at the forward pass."""

    def __init__(self) -> None:  # the label is set at the first call
        self.index = -1
        self.label = ""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if self.index < 0:
            self.index = int(model_output.detach().reshape(-1, len(LABELS))[0].argmax())
            self.label = LABELS[self.index]
        return model_output[..., self.index]


Target = ScanLabelTarget | SliceLabelTarget


# --- the wrapper ------------------------------------------------------------------------

class ScanAsBatch(nn.Module):
    """Present one scan's slices ``[S, C, H, W]`` as a batch to ``grad-cam``.

    ``forward`` runs the sequence model on ``x[None]`` (``[1, S, C, H, W]``) and returns the
    patient-level logits ``[1, 6]`` (``head="scan"``) or the slice logits ``[1, S, 6]``
    (``head="slice"``). A model whose forward returns a plain tensor is taken to return
    patient-level logits.

    Args:
        model: A model following the :class:`ichlib.model.CNNBiLSTM` contract.
        head: ``"scan"`` or ``"slice"``.
    """

    def __init__(self, model: nn.Module, head: str = "scan") -> None:
        super().__init__()
        if head not in ("scan", "slice"):
            raise ConfigError(f"head must be 'scan' or 'slice', got {head!r}")
        self.model = model
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x.unsqueeze(0))
        if self.head == "slice":
            if not hasattr(out, "slice_logits"):
                raise ConfigError("a slice target needs a model whose output has .slice_logits")
            return out.slice_logits
        return out.scan_logits if hasattr(out, "scan_logits") else out


class _ScanMaps(BaseCAM):
    """What the scan methods add to a ``grad-cam`` method, through two of its documented hooks.

    - :meth:`compute_cam_per_layer` checks that the CNN ran once on all slices as a batch (the
      way ``grad-cam``'s own FullGrad reads the recorded activations there), then runs the
      library's computation;
    - :meth:`get_cam_image` keeps each layer's map before the library scales it per slice:
      ``raw_cams[i]`` is the ReLU'd map ``[S, h, w]`` of target layer ``i``, from the last call.

    The channel weights, the weighted sum and the per-slice scaling are the library's own code
    for each method. Leaving a ``with`` block releases the hooks and lets every exception through
    (``grad-cam``'s own ``__exit__`` prints and swallows an ``IndexError``).
    """

    def __init__(self, model: nn.Module, target_layers: list[nn.Module]) -> None:
        super().__init__(model, target_layers)
        self.raw_cams: list[np.ndarray] = []

    def compute_cam_per_layer(self, input_tensor: torch.Tensor, targets: list, eigen_smooth: bool
                              ) -> list[np.ndarray]:
        acts = self.activations_and_grads.activations
        grads = self.activations_and_grads.gradients
        n = int(input_tensor.shape[0])
        if len(acts) != len(self.target_layers) or len(grads) != len(acts):
            raise IchlibError(
                f"the target layer ran {len(acts)} time(s) and got {len(grads)} gradient(s) in one "
                f"forward pass; scan Grad-CAM needs the CNN to run once on all {n} slices as a batch "
                "([B*S, C, H, W]) and the score to depend on the target layer")
        for a, g in zip(acts, grads, strict=True):
            if a.ndim != 4 or a.shape[0] != n or tuple(g.shape) != tuple(a.shape):
                raise IchlibError(f"target layer activations {tuple(a.shape)} / gradients "
                                  f"{tuple(g.shape)} are not [S={n}, F, h, w]")
        self.raw_cams = []
        return super().compute_cam_per_layer(input_tensor, targets, eigen_smooth)

    def get_cam_image(self, input_tensor: torch.Tensor, target_layer: nn.Module, targets: list,
                      activations: np.ndarray, grads: np.ndarray, eigen_smooth: bool = False
                      ) -> np.ndarray:
        cam = super().get_cam_image(input_tensor, target_layer, targets, activations, grads,
                                    eigen_smooth)
        self.raw_cams.append(np.maximum(cam, 0).astype(np.float32))
        return cam

    def __exit__(self, *exc_info: object) -> None:
        self.activations_and_grads.release()


class ScanGradCAM(_ScanMaps, GradCAM):
    """``grad-cam``'s GradCAM over one scan: channel weights from each slice's mean gradient."""


class ScanHiResCAM(_ScanMaps, HiResCAM):
    """``grad-cam``'s HiResCAM over one scan: the gradient times the activation, per position."""


class ScanGradCAMPlusPlus(_ScanMaps, GradCAMPlusPlus):
    """``grad-cam``'s GradCAM++ over one scan: positive gradients weighted by their curvature."""


class ScanLayerCAM(_ScanMaps, LayerCAM):
    """``grad-cam``'s LayerCAM over one scan: positive gradients times activations, per position."""


#: The ``grad-cam`` methods a scan can be explained with.
CAM_METHODS: dict[str, type[_ScanMaps]] = {"gradcam": ScanGradCAM, "hirescam": ScanHiResCAM,
                                           "gradcam++": ScanGradCAMPlusPlus, "layercam": ScanLayerCAM}


# --- the result -------------------------------------------------------------------------

@dataclass(frozen=True)
class ScanCAM:
    """Grad-CAM of one scan for one target.

    Attributes:
        maps: float32 ``[S, H, W]`` at input resolution, normalised as ``normalize`` says.
        importance: float32 ``[S]``, the mean over pixels of the un-normalised ReLU'd map of
            each slice at the target layer's resolution (``raw.mean((1, 2))``). It is >= 0,
            in units of the target logit, comparable across slices of one scan and one
            target, not across models. 0 means Grad-CAM sees no positive evidence there.
        raw: float32 ``[S, h, w]``, the un-normalised ReLU'd maps at the target layer.
        label: The explained label.
        probability: ``sigmoid`` of the explained logit.
        probabilities: float32 ``[6]``, ``sigmoid`` of the head's six logits (the scan's,
            or the explained slice's), columns as LABELS.
        slice_indices: int64 ``[S]``, 0-based index into the scan of each sampled slice
            (``SliceNumber - 1``); ``arange(S)`` when not given.
        head: ``"scan"`` or ``"slice"``.
        slice_pos: The explained slice position for a slice target, else None.
        normalize: ``"scan"``, ``"slice"`` or None.
    """

    maps: np.ndarray
    importance: np.ndarray
    raw: np.ndarray
    label: str
    probability: float
    probabilities: np.ndarray
    slice_indices: np.ndarray
    head: str = "scan"
    slice_pos: int | None = None
    normalize: str | None = "scan"

    def top_slices(self, k: int) -> np.ndarray:
        """Positions of the ``k`` most important slices, most important first (ties: earlier)."""
        order = np.argsort(-self.importance, kind="stable")
        return order[: max(0, int(k))]


# --- the computation --------------------------------------------------------------------

def scan_grad_cam(model: nn.Module, x: torch.Tensor | np.ndarray,
                  target: str | Target | None = "any", *, normalize: Normalize = "scan",
                  slice_indices: Sequence[int] | np.ndarray | None = None,
                  target_layer: nn.Module | str | Sequence[nn.Module | str] | None = None,
                  method: str = "gradcam") -> ScanCAM:
    """Grad-CAM maps for every slice of one scan.

    Args:
        model: A CNN + BiLSTM following the :class:`ichlib.model.CNNBiLSTM` contract.
        x: One scan's slices ``[S, C, H, W]`` (or ``[1, S, C, H, W]``), e.g. from
            :func:`~ichlib.preprocess.dataset.prepare_scan`.
        target: A label name (explains that patient-level logit), a
            :class:`ScanLabelTarget` / :class:`SliceLabelTarget`, or None for the
            patient-level label with the highest logit.
        normalize: ``"scan"`` (default) divides all slices by the one maximum over the
            whole scan (:func:`normalize_scan`), so slices can be compared; ``"slice"`` is
            ``grad-cam``'s own per-slice min-max; None keeps the un-normalised ReLU'd maps
            (upsampled). All-zero maps (e.g. from an all-zero input to a model without
            biases) give zeros, never NaN.
        slice_indices: The scan's 0-based slice index of each sampled slice, kept in the
            result for plots and NIfTI output.
        target_layer: Layer to explain: a module, a name the model resolves with
            ``model.cam_layer(name)`` (``"layer3"``, ``"layer4"`` for :class:`~ichlib.model.CNNBiLSTM`),
            or several of them, whose maps are fused (each brought to the input size and
            divided by its scan maximum, then averaged); default ``model.target_layer``.
        method: One of :data:`CAM_METHODS` (``grad-cam``'s GradCAM, HiResCAM, GradCAM++,
            LayerCAM).

    Returns:
        A :class:`ScanCAM`.

    Raises:
        ConfigError: On a bad shape, label, slice position or normalisation.
        IchlibError: If the model does not run its CNN once over all slices, or the
            maps are not finite.
    """
    if normalize not in _NORMALIZE:
        raise ConfigError(f"normalize must be 'scan', 'slice' or None, got {normalize!r}")
    if method not in CAM_METHODS:
        raise ConfigError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    x, target, slice_pos, slice_indices = _checked_inputs(x, target, slice_indices)
    layers = _resolve_layers(model, target_layer)

    first = next(model.parameters())
    device = first.device
    dtype = first.dtype if first.is_floating_point() else torch.float32
    head = getattr(target, "head", "scan")
    with _preserved_state(model), torch.inference_mode(False), torch.enable_grad(), \
            _cudnn_off(device), _graph_from(layers):
        inp = x.detach().clone().to(device=device, dtype=dtype)
        with CAM_METHODS[method](ScanAsBatch(model, head), layers) as cam:
            per_slice = cam(inp, [target])
            outputs = cam.outputs.detach().float().cpu()[0]
    height, width = int(x.shape[-2]), int(x.shape[-1])
    raw = _fuse(cam.raw_cams, (height, width))
    if normalize == "slice":
        maps = np.asarray(per_slice, dtype=np.float32)
    else:
        maps = upsample_maps(raw, (height, width))
        if normalize == "scan":
            maps = normalize_scan(maps)
    logits = outputs if head == "scan" else outputs[slice_pos]
    probabilities = torch.sigmoid(logits.reshape(-1)[: len(LABELS)]).numpy().astype(np.float32)
    return ScanCAM(
        maps=maps, importance=raw.mean(axis=(1, 2)).astype(np.float32), raw=raw,
        label=target.label, probability=float(probabilities[target.index]),
        probabilities=probabilities, slice_indices=slice_indices, head=head,
        slice_pos=slice_pos, normalize=normalize)


def whole_scan_grad_cam(model: nn.Module, slices: torch.Tensor | np.ndarray, samplings: np.ndarray,
                        label: str | None = None, *, method: str = "gradcam",
                        target_layer: nn.Module | str | Sequence[nn.Module | str] | None = None) -> ScanCAM:
    """A map for every slice of a scan, explaining the prediction made from every slice.

    The model predicts the scan from all its slices (``model.forward_scan`` over the
    covering ``samplings``, :func:`ichlib.preprocess.sampling.covering_indices`); ``label``
    (default: the most probable one) is then explained on each sampling with
    :func:`scan_grad_cam`, and each slice keeps its own map (the largest where a short scan
    repeats a slice). The maps of all samplings are normalised together across the scan.

    Args:
        model: A :class:`~ichlib.model.CNNBiLSTM` (it needs ``forward_scan``).
        slices: Every slice of the scan, windowed: ``[N, C, H, W]``.
        samplings: ``[K, S]`` slice indices that together cover ``0 .. N - 1``.
        label: The label to explain; None for the most probable.
        method, target_layer: As for :func:`scan_grad_cam`.

    Returns:
        A :class:`ScanCAM` over all ``N`` slices (``slice_indices = 0 .. N - 1``) whose
        probabilities are the whole-scan prediction's.
    """
    x = torch.as_tensor(slices)
    samplings = np.asarray(samplings, dtype=np.int64)
    n = int(x.shape[0])
    if x.ndim != 4 or samplings.ndim != 2 or set(np.unique(samplings)) != set(range(n)):
        raise ConfigError(f"need slices [N, C, H, W] and samplings [K, S] covering all {n} slices")
    if label is None:  # the most probable label needs the whole-scan prediction first
        device = next(model.parameters()).device
        with torch.inference_mode(), _preserved_state(model):
            model.eval()
            logits = model.forward_scan(x.to(device), samplings).scan_logits.float().cpu()[0]
        label = LABELS[int(np.argmax(torch.sigmoid(logits).numpy()))]
    label = ScanLabelTarget(label).label
    raws: list[np.ndarray | None] = [None] * n
    per_sampling = []
    for row in samplings:
        part = scan_grad_cam(model, x[row], label, normalize=None, slice_indices=row, method=method,
                             target_layer=target_layer)
        per_sampling.append(part.probabilities)
        for pos, k in enumerate(row):
            raws[k] = part.raw[pos] if raws[k] is None else np.maximum(raws[k], part.raw[pos])
    # the whole-scan prediction (forward_scan's default, combine="max"): per label, the largest
    # over the samplings, each already computed by its explaining pass
    probabilities = np.max(per_sampling, axis=0).astype(np.float32)
    raw = np.stack(raws).astype(np.float32)
    maps = normalize_scan(upsample_maps(raw, (int(x.shape[-2]), int(x.shape[-1]))))
    return ScanCAM(maps=maps, importance=raw.mean(axis=(1, 2)).astype(np.float32), raw=raw, label=label,
                   probability=float(probabilities[label_index(label)]), probabilities=probabilities,
                   slice_indices=np.arange(n, dtype=np.int64))



@dataclass(frozen=True)
class CamSpec:
    """One way to explain the model: a ``grad-cam`` method and its target layer(s).

    Attributes:
        method: A key of :data:`ichlib.explain.cam.CAM_METHODS`.
        layers: Layer names (``"layer4"``; several are fused).
    """

    method: str = "gradcam"
    layers: tuple[str, ...] = ("layer4",)

    @property
    def name(self) -> str:
        """``"gradcam @ layer4"``, ``"layercam @ layer3+layer4"``, ..."""
        return f"{self.method} @ {'+'.join(self.layers)}"


#: Grad-CAM at the last block: the CAM used unless another is chosen (see :data:`CANDIDATES`).
DEFAULT_CAM = CamSpec()

#: The CAMs compared on validation by :func:`ichlib.explain.localization.compare_cams`: the
#: classic Grad-CAM at the last block, and the levers for small lesions at 128 px (``layer4``
#: maps are 4 x 4 there, ``layer3`` 8 x 8, ``layer2`` 16 x 16, ``layer1`` 32 x 32): earlier
#: layers, and HiResCAM and LayerCAM, which weight each position by its own gradient instead of
#: a channel's average, so they keep the detail of an early layer.
#: Measured on the course's end-to-end model (notebook 04's defaults, seed 0; 6 validation
#: patients, 45 slices with blood; 2026-12-07), energy in the mask inside the brain and pointing
#: at 0 mm, against the chance prior's 0.012 and 1.2%: HiResCAM at layer1 0.123 and 28.9%,
#: LayerCAM at layer1 0.074 and 33.3%, HiResCAM at layer1+layer2 0.060 and 22.2%, HiResCAM at
#: layer2 0.046 and 6.7%, Grad-CAM at layer1 0.004 and 4.4% (the channel-averaged gradient of an
#: early layer cancels out). In an earlier run, LayerCAM at layer2 and Grad-CAM++ at
#: layer2+layer3 pointed no better than HiResCAM at layer2; they are left out, and the fusions,
#: to keep notebook 05 within minutes.
CANDIDATES: tuple[CamSpec, ...] = (
    CamSpec("gradcam", ("layer4",)), CamSpec("gradcam", ("layer3",)), CamSpec("hirescam", ("layer2",)),
    CamSpec("hirescam", ("layer1",)), CamSpec("layercam", ("layer1",)))


def _resolve_layers(model: nn.Module, target_layer) -> list[nn.Module]:
    if target_layer is None:
        target_layer = getattr(model, "target_layer", None)
        if target_layer is None:
            raise ConfigError("the model has no .target_layer; pass target_layer=")
    chosen = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
    if not chosen:
        raise ConfigError("target_layer names no layer")
    resolve = getattr(model, "cam_layer", None)
    layers = []
    for layer in chosen:
        if isinstance(layer, str):
            if resolve is None:
                raise ConfigError(f"the model cannot resolve the layer name {layer!r}; pass the module")
            layer = resolve(layer)
        layers.append(layer)
    return layers


def _fuse(raw_cams: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """One layer's un-normalised maps as they are; several layers' brought to ``size``, each
    divided by its scan maximum, and averaged."""
    for raw in raw_cams:
        if not np.isfinite(raw).all():
            raise IchlibError("Grad-CAM maps are not finite: the model's output or gradients hold NaN/Inf")
    if len(raw_cams) == 1:
        return raw_cams[0]
    return np.mean([normalize_scan(upsample_maps(raw, size)) for raw in raw_cams], axis=0).astype(np.float32)


def _checked_inputs(x: torch.Tensor | np.ndarray, target: str | Target | None,
                    slice_indices: Sequence[int] | np.ndarray | None
                    ) -> tuple[torch.Tensor, Target, int | None, np.ndarray]:
    """``x`` as ``[S, C, H, W]``, the target object, its slice position and the slice indices.

    Raises:
        ConfigError: On a bad shape, label or slice position.
    """
    x = torch.as_tensor(x)
    if x.ndim == 5 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 4:
        raise ConfigError(f"expected one scan [S, C, H, W], got shape {tuple(x.shape)}")
    n_slices = int(x.shape[0])
    if target is None:
        target = _TopScanLabelTarget()
    elif isinstance(target, str):
        target = ScanLabelTarget(target)
    slice_pos = None
    if isinstance(target, SliceLabelTarget):
        if not -n_slices <= target.slice_pos < n_slices:
            raise ConfigError(f"slice_pos {target.slice_pos} is outside the {n_slices} sampled slices")
        slice_pos = target.slice_pos % n_slices
    if slice_indices is None:
        slice_indices = np.arange(n_slices, dtype=np.int64)
    slice_indices = np.asarray(slice_indices, dtype=np.int64)
    if slice_indices.shape != (n_slices,):
        raise ConfigError(f"slice_indices has shape {slice_indices.shape}, expected ({n_slices},)")
    return x, target, slice_pos, slice_indices


def upsample_maps(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize maps ``[S, h, w]`` to ``size = (H, W)`` the way ``grad-cam`` does.

    Bilinear with pixel centres aligned (``align_corners=False``, what ``cv2.resize`` with
    ``INTER_LINEAR`` does when enlarging), through :func:`~ichlib.preprocess.resize.resize_slices`,
    clipped at 0.
    """
    height, width = size
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 3:
        raise ConfigError(f"expected maps [S, h, w], got shape {raw.shape}")
    out = resize_slices(raw, (int(height), int(width))).numpy() if len(raw) else \
        np.zeros((0, height, width), np.float32)
    return np.maximum(out, 0.0).astype(np.float32, copy=False)


def normalize_scan(maps: np.ndarray) -> np.ndarray:
    """Scale a whole scan's maps ``[S, H, W]`` (>= 0) to [0, 1] by their one maximum.

    No offset is subtracted, so 0 still means "no positive evidence" and the ratios
    between slices are kept. Maps whose maximum is 0 (or not a positive normal float)
    give zeros instead of 0/0. Negative values are clipped to 0 first.
    """
    maps = np.maximum(np.asarray(maps, dtype=np.float32), 0.0)
    peak = float(maps.max()) if maps.size else 0.0
    if not np.isfinite(peak) or peak < np.finfo(np.float32).tiny:
        return np.zeros_like(maps)
    return (maps / np.float32(peak)).astype(np.float32)


# --- state handling -------------------------------------------------------------------

@contextlib.contextmanager
def _preserved_state(model: nn.Module) -> Iterator[None]:
    """Freeze the parameters for the call; restore train/eval, requires_grad and .grad after.

    Gradients reach the target layer through the input (which requires grad), so the
    parameters' ``.grad`` are never written; ``grad-cam`` still calls ``zero_grad``, which
    is why the old ``.grad`` tensors are put back.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        for p, _, _ in params:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


@contextlib.contextmanager
def _graph_from(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Start the autograd graph at the target layers' outputs.

    The parameters are frozen and the input needs no gradient, so without this nothing would
    be recorded. Each target layer's output is marked as needing a gradient as it is made
    (a hook added before ``grad-cam``'s own, which then sees an output it can hook): the
    backward pass stops there instead of running on through the earlier blocks to the input,
    which they would only waste (about a third of the time of a ``layer2`` map on a CPU).
    """
    def start(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output if output.requires_grad else output.requires_grad_(True)

    handles = [layer.register_forward_hook(start) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _cudnn_off(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


# --- maps back into the scan ---------------------------------------------------------





