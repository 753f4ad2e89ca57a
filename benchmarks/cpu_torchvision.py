"""torchvision beside the CPU torch build, for the CPU benchmarks only (never the package).

The torchvision wheel that pairs with torch 2.13 (0.28.0) registers fake kernels for its compiled
operators when it is imported (`torchvision._meta_registrations`); beside the CPU build of torch
those operators do not exist and the import raises "operator torchvision::nms does not exist".
Its models need none of them (ConvNeXt-T, Swin-T and ResNet-50 here; timm, which imports
torchvision, for the official VMamba model file), so an empty module put at that name before the
first `import torchvision` lets it import. A script that calls this says so in its output.
"""

from __future__ import annotations

import importlib.util
import sys
import types

META_REGISTRATIONS = "torchvision._meta_registrations"


def skip_torchvision_meta_registrations() -> bool:
    """Put an empty `torchvision._meta_registrations` in `sys.modules` if torchvision is installed
    and not imported yet. Returns whether this process now has that stand-in."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    if "torchvision" not in sys.modules:
        sys.modules.setdefault(META_REGISTRATIONS, types.ModuleType(META_REGISTRATIONS))
    module = sys.modules.get(META_REGISTRATIONS)
    return module is not None and getattr(module, "__file__", None) is None
