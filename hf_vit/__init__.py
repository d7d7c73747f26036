"""hf_vit: Vision Transformers as first-class Hugging Face transformers models.

Importing the package registers every family (`hf_vit.families`) with the Auto classes, so `AutoConfig`,
`AutoModel`, `AutoModelForImageClassification`, `AutoImageProcessor`, `AutoBackbone`, `AutoModelForPreTraining`
(MAE) and `AutoModelForMaskedImageModeling` (SimMIM) resolve the `hf_*` model types, and checkpoints carry their
code. The wings: `models` (what checkpoints carry), `training` (the jobs), `interop` (conversion and export).
"""

from . import families  # noqa: F401  (registers the families)
from .models import *  # noqa: F403
from .models import __all__  # noqa: F401
from .registry import FAMILIES, Family  # noqa: F401
