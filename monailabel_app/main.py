"""The CT-FM MONAI Label app: serves the project's bundles from local folders, never from a download.

    .venv-label/bin/monailabel start_server --app monailabel_app --studies <images> \
        --conf models ct_fm_segmentation --conf ct_fm_weights <CT-FM encoder folder>

Configuration (``--conf key value``; see README.md beside this file):

- ``models``: comma-separated bundle names (default ``ct_fm_segmentation``); ``ct_fm_triage`` is served
  as a classification model (inference only: MONAI Label's datastore holds label images, not classes).
- ``bundle_dir``: the folder holding the bundles (default ``<app>/model``, MONAI Label's layout, where
  this repository links ``../bundles/<name>``). Trained checkpoints are written into ``<bundle>/models``.
- ``ct_fm_weights``: CT-FM encoder weights; when the bundle has no ``models/model.pt`` yet, one is
  written with this encoder and a fresh decoder, so inference and training work from the start.
- ``seg_weights``: a trained segmentation network (bundle ``model.pt`` or the released whole-body
  folder), written to ``models/model.pt`` when that does not exist yet.
- ``mc_samples`` (default 4) and ``mc_dropout`` (default 0.2): the ``mc_dropout`` scoring method.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lib.scoring import MCDropoutScoring
from lib.weights import prepare_segmentation_model
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.epistemic import Epistemic
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

import ctfm

logger = logging.getLogger(__name__)

SEGMENTATION, TRIAGE = "ct_fm_segmentation", "ct_fm_triage"


class ServedBundleTrainTask(BundleTrainTask):
    """MONAI Label's bundle trainer, with the bundle's checkpoints written where the server reads its model.

    The bundle CLI keeps each run in ``runs/train_<time>/models``; served, the best ``model.pt`` must
    replace ``<bundle>/models/model.pt``, which the next ``/infer`` loads (MONAI Label reloads a model
    whose file changed).
    """

    def _update_overrides(self, overrides):
        overrides["ckpt_dir"] = str(Path(self.bundle_path) / "models")
        return overrides


class CTFMApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        bundle_dir = Path(conf.get("bundle_dir") or Path(app_dir) / "model")
        names = [n.strip() for n in conf.get("models", SEGMENTATION).split(",") if n.strip()]
        self.bundles = {}
        for name in names:
            path = bundle_dir / name
            if not (path / "configs" / "inference.json").is_file():
                raise ValueError(
                    f"{path} is not a bundle (no configs/inference.json). Pass --conf bundle_dir <folder holding "
                    f"{name}/> or choose --conf models among: "
                    f"{sorted(p.parent.parent.name for p in bundle_dir.glob('*/configs/inference.json'))}."
                )
            self.bundles[name] = path
        if SEGMENTATION in self.bundles:
            prepare_segmentation_model(
                self.bundles[SEGMENTATION], ct_fm_weights=conf.get("ct_fm_weights"), seg_weights=conf.get("seg_weights")
            )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="CT-FM",
            description="CT-FM bundles: 117-structure whole-body segmentation, head CT triage",
            version=ctfm.__version__,
        )

    def init_infers(self):
        infers = {}
        for name, path in self.bundles.items():
            if name == TRIAGE:  # one score per scan: nothing to restore onto the image grid
                task = BundleInferTask(str(path), self.conf, type="classification", add_post_restore=False)
            else:
                task = BundleInferTask(str(path), self.conf)
            if not task.is_valid():
                raise ValueError(f"{path}: MONAI Label cannot serve it (no models/model.pt?); see the log above.")
            infers[name] = task
        return infers

    def init_trainers(self):
        if SEGMENTATION not in self.bundles:
            return {}
        return {SEGMENTATION: ServedBundleTrainTask(str(self.bundles[SEGMENTATION]), self.conf)}

    def init_strategies(self):
        # epistemic: the unlabelled image with the highest mc_dropout score (image info "epistemic_entropy").
        return {"random": Random(), "epistemic": Epistemic()}

    def init_scoring_methods(self):
        if SEGMENTATION not in self.bundles:
            return {}
        scoring = MCDropoutScoring(
            self.bundles[SEGMENTATION],
            samples=int(self.conf.get("mc_samples", 4)),
            dropout=float(self.conf.get("mc_dropout", 0.2)),
        )
        return {"mc_dropout": scoring}
