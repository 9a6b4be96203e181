"""Against a real LLaVA-1.5 checkpoint on disk (e.g. llava-hf/llava-1.5-7b-hf saved locally).

Set SPARSECUT_LLAVA_PATH to its folder to run; skipped otherwise (no downloads at test time)."""

import os

import pytest
import torch

pytestmark = pytest.mark.real_checkpoint
LLAVA_PATH = os.environ.get("SPARSECUT_LLAVA_PATH")


@pytest.mark.skipif(not LLAVA_PATH or not os.path.isdir(LLAVA_PATH), reason="set SPARSECUT_LLAVA_PATH to a local HF LLaVA folder")
def test_real_llava_matches_after_conversion():
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

    from sparsecut import SparseCutProcessor
    from sparsecut.convert import from_hf_llava

    llava = LlavaForConditionalGeneration.from_pretrained(LLAVA_PATH, dtype=torch.float32).eval()
    model = from_hf_llava(llava)
    processor = SparseCutProcessor.from_model_config(
        model.config, AutoImageProcessor.from_pretrained(LLAVA_PATH), AutoTokenizer.from_pretrained(LLAVA_PATH)
    )
    image = Image.new("RGB", (400, 300), (30, 120, 200))
    batch = processor(images=[image], text=[processor.prompt("What colour is this image?")])
    with torch.no_grad():
        ref = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"][:, 0]).logits
        ours = model(**batch).logits
    assert (ours - ref).abs().max().item() <= 1e-4
