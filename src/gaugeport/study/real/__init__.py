"""``gaugeport reproduce --preset real``: the study on a real pretrained LM (SmolLM2-135M-Instruct).

One home for the real preset: ``stages`` (models, text, lockstep fine-tuning, SAE; cached),
``checks`` (the measurements), ``report`` (the three-column report) and ``run`` (the whole job).
"""
