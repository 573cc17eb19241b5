"""De-LightSAM network modules: tensors in, tensors out; parameter names are the official checkpoint's."""

from .delightsam import DeLightSAM, DeLightSAMOutput
from .image_encoder import ImageEncoder
from .mask_decoder import ModalityMaskDecoder, upsample_logits
from .prompting import PromptEncoder, binarize_patch_logits
from .transformer import TwoWayTransformer

__all__ = [
    "DeLightSAM",
    "DeLightSAMOutput",
    "ImageEncoder",
    "ModalityMaskDecoder",
    "PromptEncoder",
    "TwoWayTransformer",
    "binarize_patch_logits",
    "upsample_logits",
]
