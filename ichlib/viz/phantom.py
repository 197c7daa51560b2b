"""What makes the phantom hard for a density rule, in one figure: mimics and blood of every age."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ichlib.preprocess.windowing import WINDOWS, window
from ichlib.synthetic.head import TISSUE
from ichlib.synthetic.phantom import make_phantom
from ichlib.viz.figures import SYNTHETIC_NOTE, TITLE_SIZE, add_note

#: The gallery's panels: (title, subtypes, forced ages, forced calcifications).
_PANELS: tuple[tuple[str, tuple[str, ...], dict[str, str], tuple[str, ...]], ...] = (
    ("calcified choroid plexus", (), {}, ("choroid",)),
    ("pineal calcification", (), {}, ("pineal",)),
    ("falx calcification", (), {}, ("falx",)),
    ("acute epidural (50-90 HU)", ("epidural",), {"epidural": "acute"}, ()),
    ("subacute subdural (30-45 HU)", ("subdural",), {"subdural": "subacute"}, ()),
    ("chronic subdural (0-25 HU)", ("subdural",), {"subdural": "chronic"}, ()),
    ("acute-on-chronic subdural", ("subdural",), {"subdural": "mixed"}, ()),
    ("layering intraparenchymal", ("intraparenchymal",), {"intraparenchymal": "layered"}, ()),
)


def plot_phantom_findings(size: int = 256, n_slices: int = 30, seed: int = 0) -> Figure:
    """A gallery of synthetic heads: calcifications that are as dense as fresh blood, and blood
    of every age (old blood is as dense as brain or CSF), each on its most telling slice, in
    the brain window, masks outlined.

    Args:
        size: In-plane size of each phantom.
        n_slices: Slices per phantom.
        seed: Seed of the heads (the same seed gives the same figure).
    """
    fig, axes = plt.subplots(2, 4, figsize=(13, 7.4), layout="constrained")
    for ax, (title, subtypes, ages, calcs) in zip(axes.ravel(), _PANELS, strict=True):
        ph = make_phantom(np.random.default_rng(seed), size=size, n_slices=n_slices, subtypes=subtypes,
                          ages=ages, calcifications=calcs)
        found = ph.masks[subtypes[0]] if subtypes else ph.tissue == TISSUE["calcification"]
        k = int(np.argmax(found.sum(axis=(1, 2))))
        ax.imshow(window(ph.hu[k], *WINDOWS["brain"]), cmap="gray", vmin=0, vmax=1)
        if subtypes and found[k].any():
            ax.contour(found[k].astype(float), levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_title(f"{title}\nslice {k + 1}", fontsize=TITLE_SIZE)
        ax.set_axis_off()
    fig.suptitle("what a density rule confuses: mimics and blood ages (brain window, blood outlined)",
                 fontsize=TITLE_SIZE + 1)
    add_note(fig, SYNTHETIC_NOTE)
    return fig
