"""Inference with the best model of one fold.

- ``python scripts/infer.py run --config_file configs/hyper_parameters.yaml`` writes label maps of the
  datalist's ``testing`` list (``infer#data_list_key``) to ``prediction_testing/``.
- ``InferClass`` is Auto3DSeg's ensembling hook: ``infer(image)`` returns the class probabilities on the
  image's own grid, which AutoRunner's ensembler averages over folds and algorithms and saves.
"""

import os
import sys

import fire

# AutoRunner runs these files as plain scripts, and its ensembler loads infer.py by path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ctfm_segmenter import Segmenter


class InferClass:
    def __init__(self, config_file=None, **override):
        # The ensembler passes its own keys too (rank, image_save_func...): keep only hyper-parameters.
        self.segmenter = Segmenter(config_file, override, strict=False)
        self.segmenter.load_model()

    def infer(self, image_file):
        return self.segmenter.infer_image(image_file)


def run(config_file, **override) -> list:
    return Segmenter(config_file, override).infer_datalist()


if __name__ == "__main__":
    fire.Fire()
