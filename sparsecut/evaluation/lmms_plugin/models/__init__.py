"""The model table lmms-eval's ``LMMS_EVAL_PLUGINS`` hook reads: ``--model sparsecut`` -> ``models/sparsecut.py``."""

AVAILABLE_MODELS = {"sparsecut": "SparseCut"}
