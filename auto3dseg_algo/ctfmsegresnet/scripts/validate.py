"""Validate the best model of one fold on its validation cases, on their original grids:
``python scripts/validate.py run --config_file configs/hyper_parameters.yaml``.

Prints the Dice per class and writes label maps to ``prediction_validation/`` (``validate#save_mask``).
"""

import os
import sys

import fire

# AutoRunner runs these files as plain scripts, and its ensembler loads infer.py by path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ctfm_segmenter import Segmenter


def run(config_file, **override) -> list:
    return Segmenter(config_file, override).validate()


if __name__ == "__main__":
    fire.Fire()
