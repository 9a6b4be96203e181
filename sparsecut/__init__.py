"""SparseCut: sparse shortcut connections from a vision encoder into an LLM, with high-res fusion."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .config import SparseCutConfig
from .model import SparseCutForConditionalGeneration, SparseCutModel, SparseCutPreTrainedModel
from .patterns import PATTERN_NAMES, describe, make_pattern
from .processing import SparseCutProcessor

AutoConfig.register(SparseCutConfig.model_type, SparseCutConfig, exist_ok=True)
AutoModel.register(SparseCutConfig, SparseCutModel, exist_ok=True)
AutoModelForImageTextToText.register(SparseCutConfig, SparseCutForConditionalGeneration, exist_ok=True)
AutoProcessor.register(SparseCutConfig, SparseCutProcessor, exist_ok=True)

__all__ = [
    "PATTERN_NAMES",
    "SparseCutConfig",
    "SparseCutForConditionalGeneration",
    "SparseCutModel",
    "SparseCutPreTrainedModel",
    "SparseCutProcessor",
    "describe",
    "make_pattern",
]
