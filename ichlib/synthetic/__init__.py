"""The synthetic head-CT phantom: CT-ICH layout (NIfTI) and RSNA 2019 layout (DICOM).

Everything it writes is SYNTHETIC: no patient data is used or reproduced.
"""

from ichlib.synthetic.phantom import Phantom, make_phantom
from ichlib.synthetic.rsna import write_synthetic_rsna
from ichlib.synthetic.writer import write_synthetic_ct_ich

__all__ = ["Phantom", "make_phantom", "write_synthetic_ct_ich", "write_synthetic_rsna"]
