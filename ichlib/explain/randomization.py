"""The model-randomisation sanity check (Adebayo et al. 2018): re-initialise the trained
model's weights from the top down; an explanation that does not change is not explaining it."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ichlib.errors import ConfigError


def randomization_stages(model: nn.Module) -> list[str]:
    """The names of the parts :func:`cascading_randomization` re-initialises, top first.

    If the model defines ``randomization_stages()``, that is used. Otherwise: the model's
    children other than ``encoder`` (the scan head, names containing ``scan``, first; then
    recurrent layers; then the slice head, names containing ``slice``; then any other,
    last-registered first), followed by the encoder's children from the last to the
    first, with ``nn.Sequential`` children (ResNet stages) split into their blocks.
    Parts without parameters are skipped.
    """
    custom = getattr(model, "randomization_stages", None)
    if callable(custom):
        return list(custom())

    def rank(item: tuple[int, str, nn.Module]) -> tuple[int, int]:
        order, name, module = item
        lowered = name.lower()
        if "scan" in lowered:
            group = 0
        elif isinstance(module, nn.RNNBase) or any(k in lowered for k in ("lstm", "rnn", "gru")):
            group = 1
        elif "slice" in lowered:
            group = 2
        else:
            group = 3
        return group, -order

    children = [(i, n, m) for i, (n, m) in enumerate(model.named_children())
                if n != "encoder" and _has_params(m)]
    stages = [name for _, name, _ in sorted(children, key=rank)]
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module):
        for name, child in reversed(list(encoder.named_children())):
            if not _has_params(child):
                continue
            if isinstance(child, nn.Sequential):
                stages += [f"encoder.{name}.{b}" for b, block in reversed(list(child.named_children()))
                           if _has_params(block)]
            else:
                stages.append(f"encoder.{name}")
    return stages


def cascading_randomization(model: nn.Module, upto: int | str = "all", *,
                            stages: Sequence[str] | None = None, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with its weights re-initialised from the top down.

    Adebayo et al. (2018), "Sanity checks for saliency maps": re-initialise the top layer,
    then the next, and so on; an explanation that does not change is not explaining the
    trained model. The original model is not touched.

    Args:
        model: The trained model.
        upto: How far down to go: ``"all"``, a number of stages, or a stage name
            (re-initialise the stages before it and it).
        stages: Stage names (dotted module paths), top first; default
            :func:`randomization_stages`.
        seed: Seed for the new weights (the global RNG is left as it was).

    Returns:
        The randomised copy, on the model's device, in the model's train/eval mode. Each
        module's ``reset_parameters()`` is used (BatchNorm also resets its running
        statistics); a parameter of a module without one is drawn from N(0, 0.02^2).
    """
    stages = list(stages) if stages is not None else randomization_stages(model)
    if isinstance(upto, str) and upto != "all":
        if upto not in stages:
            raise ConfigError(f"unknown stage {upto!r}; stages are {', '.join(stages)}")
        chosen = stages[: stages.index(upto) + 1]
    elif upto == "all":
        chosen = stages
    else:
        if not 0 <= int(upto) <= len(stages):
            raise ConfigError(f"upto must be between 0 and {len(stages)}, got {upto}")
        chosen = stages[: int(upto)]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    clone = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in chosen:
            _reinitialize(clone.get_submodule(name))
    return clone.to(device)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


@torch.no_grad()
def _reinitialize(module: nn.Module) -> None:
    covered: set[int] = set()
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
            covered.update(id(p) for p in sub.parameters(recurse=False))
            if isinstance(sub, nn.RNNBase):
                covered.update(id(p) for p in sub.parameters())
    for p in module.parameters():
        if id(p) not in covered:
            p.normal_(0.0, 0.02)
