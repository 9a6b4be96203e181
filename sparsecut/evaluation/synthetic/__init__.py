"""The synthetic benchmark's generator: scenes (``scenes``), questions, answers and captions (``questions``), the
bitmap font (``font``) and the files a split is written as (``dataset``). Every image and question is a pure
function of ``(seed, index)``. The benchmark's reader and scoring are ``sparsecut.evaluation.benchmarks.synthetic``;
the embedded family is trained on it (``training/tiny``) and the app's case studies come from it."""
