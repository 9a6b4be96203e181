"""Evaluation on the paper's benchmarks: readers of the released formats, the official metrics, a resumable
data-parallel runner (``python -m sparsecut.evaluation``) and plugins for lmms-eval and VLMEvalKit.

- ``metrics``: ``vqa_accuracy`` (official VQA rule, or the EvalAI processor), ``gqa_accuracy``,
  ``pope_metrics``, ``choice_accuracy``, ``circular_accuracy``.
- ``benchmarks``: ``BENCHMARKS`` (vqav2, gqa, vizwiz, scienceqa, textvqa, pope, mmbench, seedbench, synthetic).
- ``runner.run(RunConfig(...))``; ``tables``: the paper's Tables 1, 2 and 5 as markdown.
- ``lmms_plugin`` (lmms-eval ``generate_until``), ``vlmevalkit`` (VLMEvalKit ``generate_inner``).
"""
