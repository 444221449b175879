"""ctfm: the shared code of the CT-FM bundles, Auto3DSeg template and tools.

- :mod:`ctfm.registry`     fixed names and numbers (encoder topology, HU range, class maps)
- :mod:`ctfm.networks`     the CT-FM encoder and the networks built around it
- :mod:`ctfm.weights`      read and write CT-FM weights in every form a user holds, strictly
- :mod:`ctfm.transforms`   the canonical CT-FM preprocessing
- :mod:`ctfm.validation`   checks that turn bad input into clear errors
- :mod:`ctfm.viz`          figures a person can read
- :mod:`ctfm.data`         real sample CT from the package registries, and CT-like phantoms
- :mod:`ctfm.analysis`     what the paper does with embeddings: retrieval, search, OCD, PCA, saliency, ...
- :mod:`ctfm.datasets`     public CT datasets in their published layouts -> datalists
- :mod:`ctfm.pretraining`  the IDC series list, the preprocessed HU cache, checkpoint selection
- :mod:`ctfm.evaluation`   tumour metrics, segmentation comparison
- :mod:`ctfm.training`     what every training run shares (its checkpoints, newest first)
- :mod:`ctfm.metrics`      bootstrap confidence intervals, macro mean
- :mod:`ctfm.inference`    sliding-window segmentation inference shared by the bundle and ``ctfm segment``
- :mod:`ctfm.segmentation` ``ctfm.segment(...)``: whole-body segmentation and its outputs; structure statistics

``ctfm.segment`` and ``ctfm.segmentation_statistics`` are imported on first use, so ``import ctfm`` stays instant.
"""

import logging as _logging
import warnings as _warnings

__version__ = "0.1.0"

# MONAI announces at every DICOM read that the GPU JPEG decoder nvImageCodec is absent; CT-FM reads DICOM with
# ITK or pydicom's own decoders, so the lines only bury the messages that matter.
_logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(_logging.ERROR)
_warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin")


_LAZY = {"segment": "ctfm.segmentation", "segmentation_statistics": "ctfm.segmentation"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ctfm' has no attribute {name!r}")
