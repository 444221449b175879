"""Train one fold (what AutoRunner runs): ``python scripts/train.py run --config_file configs/hyper_parameters.yaml``.

Any hyper-parameter can be overridden, e.g. ``--num_epochs=10 --learning_rate=0.0005``. A run killed
part way resumes from ``model/model_last.pt``.
"""

import os
import sys

import fire

# AutoRunner runs these files as plain scripts, and its ensembler loads infer.py by path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ctfm_segmenter import Segmenter


def run(config_file, **override) -> float:
    return Segmenter(config_file, override).train()


if __name__ == "__main__":
    fire.Fire()
