"""Where comparisons come from: the annotation app (``rlhf annotate``), its work queues with quality control, and the
stratified audit sampling of served traffic. No Dagster here: the assets in defs/annotation/ call into it."""
