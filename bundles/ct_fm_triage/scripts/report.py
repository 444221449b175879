"""Triage metrics with 95% bootstrap intervals, the operating threshold, and the handlers that write them.

- AUROC is MONAI's ``compute_roc_auc``; F1, accuracy, sensitivity and specificity come from MONAI's
  confusion matrix at a probability threshold (a case is abnormal when its probability >= threshold).
- Intervals resample cases with replacement (``ctfm.metrics.bootstrap_paired_ci``, 1000 resamples).
- The reported F1 (and accuracy, sensitivity, specificity) are at probability 0.5, as the paper's
  (the authors' ``BinaryF1Score``); ``threshold`` overrides it.
- Training also records the threshold that maximises F1 on the validation set (``threshold.json`` next
  to the best model, written whenever the validation AUROC improves). Evaluation reports the metrics at
  that threshold beside the paper's, labelled ``at_validation_threshold``, so a zero-shot CQ500 run can
  be read both ways.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.metrics import compute_confusion_matrix_metric, compute_roc_auc, get_confusion_matrix
from torch.utils.data import DistributedSampler

from ctfm.io import csv_text, write_text_atomic
from ctfm.metrics import bootstrap_paired_ci, in_dataset_order
from scripts.data import LABEL_NAMES

logger = logging.getLogger(__name__)

THRESHOLD_FILE = "threshold.json"
PAPER_THRESHOLD = 0.5  # the paper's F1: a case is abnormal when its probability >= 0.5
METRICS = ("auroc", "f1", "accuracy", "sensitivity", "specificity")
CONFUSION_NAMES = {"f1": "f1 score", "accuracy": "accuracy", "sensitivity": "sensitivity", "specificity": "specificity"}


# --- Metrics ----------------------------------------------------------------------------------
def roc_auc(labels, probs) -> float:
    """Area under the ROC curve (NaN when only one class is present)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-class bootstrap resamples: NaN, skipped by the bootstrap
        return float(compute_roc_auc(torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(labels)))


def confusion_metric(name: str, labels, probs, threshold: float) -> float:
    """``f1``, ``accuracy``, ``sensitivity`` or ``specificity`` of the decisions ``probs >= threshold``."""
    decided = torch.as_tensor(np.asarray(probs) >= threshold, dtype=torch.float32)[:, None]
    truth = torch.as_tensor(np.asarray(labels), dtype=torch.float32)[:, None]
    matrix = get_confusion_matrix(decided, truth).sum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty denominator gives NaN
        return float(compute_confusion_matrix_metric(CONFUSION_NAMES[name], matrix))


def triage_metrics(labels, probs, threshold: float, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every metric of ``METRICS`` as ``{"value", "ci95": [low, high]}``, plus the counts and the threshold."""
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    result: dict = {"n": int(labels.size), "n_abnormal": int(labels.sum()), "threshold": float(threshold)}
    for name in METRICS:
        if name == "auroc":
            metric = roc_auc
        else:
            def metric(y, p, name=name):
                return confusion_metric(name, y, p, threshold)
        value, low, high = bootstrap_paired_ci(metric, labels, probs, n_boot=n_boot, seed=seed)
        result[name] = {"value": value, "ci95": [low, high]}
    return result


def choose_threshold(labels, probs) -> float:
    """The probability threshold that maximises F1 on these cases (the validation set)."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(np.asarray(labels, dtype=int), np.asarray(probs))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return float(thresholds[int(np.argmax(f1[:-1]))])


def read_threshold(ckpt_path: str | os.PathLike, required: bool = True) -> float | None:
    """The threshold that training chose on its validation set, stored next to the model.

    ``required=False`` returns ``None`` when the model has none (it was not trained by this bundle).
    """
    path = Path(ckpt_path).with_name(THRESHOLD_FILE)
    if not path.is_file() and not required:
        return None
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: it is written by training next to the best model. Give the threshold "
            "yourself, e.g. --threshold 0.5 (or the value chosen on your validation set)."
        )
    return float(json.loads(path.read_text())["threshold"])


# --- Writing ----------------------------------------------------------------------------------
def save_roc_curve(labels, probs, threshold: float, path: Path, title: str) -> Path:
    """ROC curve PNG with the operating point at ``threshold``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, probs)
    decided = np.asarray(probs) >= threshold
    labels = np.asarray(labels)
    point = (decided[labels == 0].mean(), decided[labels == 1].mean())
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUROC {roc_auc(labels, probs):.3f}")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.plot(*point, "o", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- Handlers ---------------------------------------------------------------------------------
class PredictionCollector:
    """Collects case id, probability and label of every case an evaluator sees in one epoch.

    Reads the evaluator's decollated output after postprocessing: ``pred`` is the probability
    (sigmoid of the logit) and ``label`` the truth when the datalist has one.

    When the evaluator's loader has a ``DistributedSampler`` (multi_gpu_evaluate.json: each process sees its
    shard), every process gathers all cases at the end of the epoch, in the dataset's order.
    """

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.probs: list[float] = []
        self.labels: list[int] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._gather)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def _reset(self, engine: Engine) -> None:
        self.ids, self.probs, self.labels = [], [], []

    def _collect(self, engine: Engine) -> None:
        for batch, output in zip(engine.state.batch, engine.state.output):
            self.ids.append(str(batch["id"]))
            self.probs.append(float(output["pred"]))
            if output.get("label") is not None:
                self.labels.append(int(output["label"]))

    def _gather(self, engine: Engine) -> None:
        sampler = getattr(engine.state.dataloader, "sampler", None)
        if not isinstance(sampler, DistributedSampler) or sampler.num_replicas == 1:
            return
        if sampler.shuffle or sampler.total_size != len(sampler.dataset):
            raise ValueError(
                "a sharded evaluation needs DistributedSampler(shuffle=False, even_divisible=False), as "
                "multi_gpu_evaluate.json sets: shuffled or padded shards would reorder or repeat cases."
            )
        self.ids, self.probs, self.labels = (
            in_dataset_order([x for part in idist.all_gather(values) for x in part], sampler.num_replicas)
            for values in (self.ids, self.probs, self.labels))

    def epoch_completed(self, engine: Engine) -> None:
        raise NotImplementedError


class ThresholdSaver(PredictionCollector):
    """Training: when the validation AUROC improves (the best model is saved), store the F1-best threshold."""

    def __init__(self, output_dir: str | os.PathLike):
        super().__init__()
        self.path = Path(output_dir) / THRESHOLD_FILE

    def epoch_completed(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch or len(set(self.labels)) < 2:
            return
        record = {
            "threshold": choose_threshold(self.labels, self.probs),
            "rule": "maximises F1 on the validation set; a case is abnormal when its probability >= threshold",
            "epoch": engine.state.epoch,
            "validation_auroc": roc_auc(self.labels, self.probs),
            "validation_cases": len(self.labels),
        }
        write_text_atomic(self.path, json.dumps(record, indent=2) + "\n")
        logger.info("validation threshold %.4f (max F1) saved to %s", record["threshold"], self.path)


class TriageReport(PredictionCollector):
    """Evaluation: ``predictions.csv``, ``metrics.json`` (95% bootstrap intervals) and ``roc_curve.png``."""

    def __init__(self, output_dir: str | os.PathLike, threshold: float = PAPER_THRESHOLD,
                 validation_threshold: float | None = None, datalist: str = "", n_boot: int = 1000):
        super().__init__()
        self.output_dir, self.threshold, self.datalist, self.n_boot = Path(output_dir), float(threshold), datalist, n_boot
        self.validation_threshold = validation_threshold

    def epoch_completed(self, engine: Engine) -> None:
        if len(self.labels) != len(self.probs):
            raise ValueError("evaluation needs a label for every case; use inference.json for unlabelled scans.")
        if idist.get_rank() > 0:  # under torchrun every rank holds all cases now; rank 0 writes
            return
        metrics = triage_metrics(self.labels, self.probs, self.threshold, n_boot=self.n_boot)
        if self.validation_threshold is not None:  # labelled: not the paper's operating point
            beside = triage_metrics(self.labels, self.probs, self.validation_threshold, n_boot=self.n_boot)
            metrics["at_validation_threshold"] = {
                "rule": "the threshold that maximised F1 on the training run's validation set",
                **{k: beside[k] for k in ("threshold", *METRICS) if k != "auroc"},
            }
        metrics["datalist"] = str(self.datalist)
        rows = [
            [i, y, p, int(p >= self.threshold)] for i, y, p in zip(self.ids, self.labels, self.probs)
        ]
        write_text_atomic(self.output_dir / "predictions.csv", csv_text(["id", "label", "probability", "predicted"], rows))
        write_text_atomic(self.output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        if len(set(self.labels)) == 2:
            save_roc_curve(self.labels, self.probs, self.threshold, self.output_dir / "roc_curve.png",
                           title=f"{len(self.labels)} scans")
        lines = [f"{name:12s} {m['value']:.3f}  (95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})"
                 for name, m in metrics.items() if name in METRICS]
        logger.info("triage evaluation, %d scans, threshold %.4f:\n  %s\nwritten to %s",
                    len(self.labels), self.threshold, "\n  ".join(lines), self.output_dir)


class PredictionWriter(PredictionCollector):
    """Inference: ``predictions.csv`` and ``predictions.json``, one probability and label per scan."""

    def __init__(self, output_dir: str | os.PathLike, threshold: float = PAPER_THRESHOLD):
        super().__init__()
        self.output_dir, self.threshold = Path(output_dir), float(threshold)

    def epoch_completed(self, engine: Engine) -> None:
        records = [
            {"id": i, "probability": p, "label": LABEL_NAMES[int(p >= self.threshold)], "threshold": self.threshold}
            for i, p in zip(self.ids, self.probs)
        ]
        rows = [[r["id"], r["probability"], r["label"]] for r in records]
        write_text_atomic(self.output_dir / "predictions.csv", csv_text(["id", "probability", "label"], rows))
        write_text_atomic(self.output_dir / "predictions.json", json.dumps(records, indent=2) + "\n")
        for r in records:
            logger.info("%s: %s (probability %.3f, threshold %.3f)", r["id"], r["label"], r["probability"], self.threshold)
