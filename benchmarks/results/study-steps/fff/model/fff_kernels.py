"""Stand-in for the compiled FFF kernel of the ``ultrafastbert`` package (its ``kernels`` and ``ops``
modules), which a saved folder does not carry: ``available()`` is False, with a warning once, so the FFF layers of
this folder run their pure-PyTorch paths. With the package installed, the model code here uses the package's own
FFF layer instead.
"""

import sys
import warnings

import torch

_warned = False


def available() -> bool:
    """False: there is no compiled kernel here."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "ultrafastbert is not installed: the FFF layers of this model folder run their pure-PyTorch paths "
            "(install the ultrafastbert package for its compiled CPU kernel)",
            RuntimeWarning,
            stacklevel=2,
        )
    return False


KERNEL_DTYPES = (torch.float32, torch.bfloat16)  # as in ultrafastbert/fff/ops.py
TRITON_DEVICES: set[str] = set()  # as in ultrafastbert/fff/ops.py

# The layer imports the kernel modules themselves; this module takes the place of each.
kernels = ops = sys.modules[__name__]
