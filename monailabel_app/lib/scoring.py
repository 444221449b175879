"""Monte Carlo dropout scoring of unlabelled images: how unsure the served segmentation model is of each one.

Every unlabelled image goes through the bundle's own preprocessing and sliding-window inferer with the
bundle's network in ``eval()`` mode (batch norm on its running statistics) and only its dropout active
(``network_def#dropout``, see ``ctfm.networks.DropoutSegResNetDS``). Inside each window the network runs
``samples`` times; the window's output is the entropy of the mean softmax, divided by log(classes), so
only one channel is stitched (118 classes x a whole CT would not fit in memory). The score is that
entropy averaged over the body (voxels above -500 HU: the air around it is trivially background, and its
share of the volume depends only on the field of view), in [0, 1], stored as the image's
``epistemic_entropy``, which MONAI Label's ``Epistemic`` strategy ranks.

MONAI Label's own ``EpistemicScoring`` does not fit this bundle: it puts the whole network in ``train()``
mode (batch norm then normalises with each window's statistics) and reads the post-processed,
arg-maxed label map instead of probabilities.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.utils.others.class_utils import unload_module
from monailabel.utils.others.generic import name_to_device

from ctfm.io import root_cause
from ctfm.registry import HU_MAX, HU_MIN
from ctfm.weights import load_network_weights

logger = logging.getLogger(__name__)

SCORE_KEY, MODEL_TS_KEY, ERROR_KEY = "epistemic_entropy", "epistemic_ts", "epistemic_error"
BODY_HU = -500.0  # voxels above it are the body (soft tissue, bone, and the lungs' denser parts)


class MCDropoutScoring(ScoringMethod):
    def __init__(self, bundle: Path, samples: int = 4, dropout: float = 0.2):
        super().__init__(f"MC dropout (p={dropout}, {samples} samples): mean predictive entropy of each image")
        if samples < 2 or not 0 < dropout < 1:
            raise ValueError(f"mc_samples must be >= 2 and 0 < mc_dropout < 1; got {samples} and {dropout}.")
        self.bundle, self.samples, self.dropout = Path(bundle), samples, dropout
        self.model_file = self.bundle / "models" / "model.pt"

    def __call__(self, request, datastore):
        start = time.time()
        model_ts = int(os.stat(self.model_file).st_mtime)
        device = name_to_device(request.get("device", "cuda"))
        unlabelled = datastore.get_unlabeled_images()
        todo = [i for i in unlabelled if datastore.get_image_info(i).get(MODEL_TS_KEY) != model_ts]  # new model only
        scores, failed = {}, {}
        if todo:
            network, preprocessing, inferer = self._load(device)
            samples = int(request.get("samples", self.samples))
            for image_id in todo:
                try:
                    image = preprocessing({"image": datastore.get_image_uri(image_id)})["image"]
                    scores[image_id] = self.score(network, inferer, image.to(device), samples)
                    info = {SCORE_KEY: scores[image_id], MODEL_TS_KEY: model_ts, ERROR_KEY: ""}
                except Exception as err:  # noqa: BLE001 - one unreadable image must not stop the others
                    failed[image_id] = f"{type(root_cause(err)).__name__}: {root_cause(err)}"
                    logger.error("mc_dropout: %s cannot be scored: %s", image_id, failed[image_id])
                    info = {SCORE_KEY: 0.0, MODEL_TS_KEY: model_ts, ERROR_KEY: failed[image_id]}
                datastore.update_image_info(image_id, info)
        summary = {"executed": len(todo), "scores": scores, "failed": failed, "latency": round(time.time() - start, 3)}
        logger.info("mc_dropout: %s", summary)
        return summary

    def _load(self, device):
        """The bundle's network (with dropout), preprocessing and inferer, as its inference.json defines them."""
        sys.path.insert(0, str(self.bundle))  # the bundle's own `scripts` package, as MONAI Label loads it
        unload_module("scripts")
        try:
            config = ConfigParser()
            config.read_config(self.bundle / "configs" / "inference.json")
            config["bundle_root"] = str(self.bundle)
            config["network_def"]["dropout"] = self.dropout
            config["stitch"] = "logits"  # the inferer stitches the entropy map, not labels
            network = load_network_weights(config.get_parsed_content("network_def"), self.model_file).to(device)
            preprocessing = config.get_parsed_content("preprocessing")
            inferer = config.get_parsed_content("inferer")
        finally:
            sys.path.remove(str(self.bundle))
        network.eval()
        network.dropout.train()  # Monte Carlo dropout: only the dropout is random
        return network, preprocessing, inferer

    @torch.no_grad()
    def score(self, network, inferer, image: torch.Tensor, samples: int) -> float:
        def window_entropy(window):
            probs = sum(torch.softmax(network(window).float(), dim=1) for _ in range(samples)) / samples
            entropy = -(probs * torch.log(probs.clamp_min(1e-8))).sum(dim=1, keepdim=True)
            return entropy / math.log(probs.shape[1])

        entropy = inferer(image[None], window_entropy)[0, 0]
        body = image[0] > (BODY_HU - HU_MIN) / (HU_MAX - HU_MIN)  # the preprocessing scaled HU_MIN..HU_MAX to 0..1
        return float(entropy[body].mean()) if body.any() else float(entropy.mean())
