"""The Gradio demo (``python -m app``): SparseCut vs a LLaVA baseline, side by side, with views inside."""
