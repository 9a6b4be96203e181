"""Training SparseCut with the paper's two-stage LLaVA-1.5 recipe on accelerate (``python -m training``)."""
