"""Network modules (De-LightSAM, LiteMedSAM): tensors in, tensors out; parameter names are the checkpoints'."""

from .delightsam import DeLightSAM, DeLightSAMOutput
from .image_encoder import ImageEncoder
from .litemedsam import BoxDecoderOutput, LiteMedSAM
from .mask_decoder import ModalityMaskDecoder, PromptMaskDecoder, upsample_logits
from .prompting import PromptEncoder, binarize_patch_logits
from .transformer import TwoWayTransformer

__all__ = [
    "BoxDecoderOutput",
    "DeLightSAM",
    "DeLightSAMOutput",
    "ImageEncoder",
    "LiteMedSAM",
    "ModalityMaskDecoder",
    "PromptEncoder",
    "PromptMaskDecoder",
    "TwoWayTransformer",
    "binarize_patch_logits",
    "upsample_logits",
]
