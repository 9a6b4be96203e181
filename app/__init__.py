"""The Gradio demo (``python -m app``): SparseCut vs a LLaVA baseline, side by side, with views inside."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before any gradio import: no telemetry, no version check
