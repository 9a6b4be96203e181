"""SparseCut as an lmms-eval model, through lmms-eval's ``LMMS_EVAL_PLUGINS`` hook (a "simple" model: the task's
``doc_to_text`` / ``doc_to_visual``).

    pip install lmms-eval
    LMMS_EVAL_PLUGINS=sparsecut.evaluation.lmms_plugin accelerate launch --num_processes 4 -m lmms_eval \\
        --model sparsecut --model_args pretrained=runs/stage2,batch_size=8 \\
        --tasks vqav2_val,gqa,vizwiz_vqa_val,scienceqa_img,textvqa_val,pope,mmbench_en_dev,mmbench_cn_dev,seedbench \\
        --batch_size 1 --log_samples --output_path runs/lmms_eval

``model_args``: ``pretrained`` (a shipped name, SparseCut folder or HF LLaVA folder), ``batch_size`` (questions per
``generate`` call), ``max_new_tokens`` (default when a task sets none), ``dtype``, ``template``, ``device``.
lmms-eval imports ``sparsecut.evaluation.lmms_plugin.models``, whose ``AVAILABLE_MODELS`` names the class.
"""
