"""Measuring results the way the paper reports them.

- :mod:`ctfm.evaluation.tumour`: tumour Dice and surface distance per case with 95% bootstrap intervals,
  and two runs side by side (``ctfm evaluate-tumour``).
- :mod:`ctfm.evaluation.segmentation`: two whole-body segmentation evaluations structure by structure,
  win rate and label-group means (``ctfm compare-segmentation``).

The bootstrap intervals and the macro mean are :mod:`ctfm.metrics`, shared with the bundles.
"""
