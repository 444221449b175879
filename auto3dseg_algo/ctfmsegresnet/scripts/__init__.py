"""Scripts of the ctfmsegresnet template: algo.py (Auto3DSeg), train.py, validate.py, infer.py, ctfm_segmenter.py (the shared core)."""
