"""MONAI ``SupervisedTrainer`` with the contrastive iteration: no labels, views grouped by scan."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from monai.engines import SupervisedTrainer
from torch.nn.parallel import DistributedDataParallel

from scripts.losses import embedding_std, pair_similarities


class ContrastiveTrainer(SupervisedTrainer):
    """One iteration: ``(S, M, 2, 1, *patch)`` views -> encoder -> head -> loss grouped by scan -> step.

    ``scans_per_forward`` splits the S scans of a batch into smaller forward/backward passes whose
    gradients add up before one optimiser step. The intra-sample losses never mix scans, so this is
    exact for them (BatchNorm sees smaller batches); it lets the paper's 16 x 20 batch fit in memory.

    ``forward_per_view`` (default, the authors'): one encoder pass per crop and view, each over the scans
    of the (part of the) batch, so batch norm normalises every patch with patches of *other scans*, as the
    authors' lighter ``SimCLR`` model did for its nested crop/view input. ``False`` puts all views of the
    batch through one pass (batch norm then mixes the crops of one scan); in eval mode the two give the
    same loss, since only batch statistics differ (tested).

    ``device_augmentation`` (``scripts.augment.BatchedViewAugmentation``) augments every view of the
    batch on the training device before the forward pass: the costly augmentations run there, not in
    the DataLoader workers.

    Output (what the handlers log): loss, lr, positive_similarity, negative_similarity, embedding_std.
    """

    def __init__(self, *args, scans_per_forward: int | None = None, device_augmentation=None,
                 forward_per_view: bool = True, **kwargs):
        kwargs.setdefault("decollate", False)  # the output is a dict of scalars, not a batch
        super().__init__(*args, **kwargs)
        self.scans_per_forward = scans_per_forward
        self.device_augmentation = device_augmentation
        self.forward_per_view = forward_per_view

    def _iteration(self, engine: ContrastiveTrainer, batchdata: torch.Tensor) -> dict:
        views = batchdata.to(engine.state.device, non_blocking=engine.non_blocking)
        if engine.device_augmentation is not None:
            views = engine.device_augmentation.for_iteration(engine.state.iteration)(views)
        scans, crops = views.shape[:2]
        parts = views.split(engine.scans_per_forward or scans)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        total, embeddings, projections = 0.0, [], []
        for i, part in enumerate(parts):
            # Under DDP, gradients are averaged across processes once, on the last part.
            sync = nullcontext()
            if isinstance(engine.network, DistributedDataParallel) and i < len(parts) - 1:
                sync = engine.network.no_sync()
            with sync:
                with torch.autocast(views.device.type, enabled=engine.amp, **engine.amp_kwargs):
                    embedding, projection, prediction = forward_views(engine.network, part, engine.forward_per_view)
                    grouped = (part.shape[0], crops, 2, -1)
                    loss = engine.loss_function(
                        projection.reshape(grouped), None if prediction is None else prediction.reshape(grouped)
                    )
                weighted = loss * (part.shape[0] / scans)
                (engine.scaler.scale(weighted) if engine.amp and engine.scaler else weighted).backward()
            total += float(weighted.detach())
            embeddings.append(embedding.detach())
            projections.append(projection.detach().reshape(grouped))
        if engine.amp and engine.scaler:
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            engine.optimizer.step()
        positive, negative = pair_similarities(torch.cat(projections))
        return {
            "loss": total,
            "lr": engine.optimizer.param_groups[0]["lr"],
            "positive_similarity": positive,
            "negative_similarity": negative,
            "embedding_std": embedding_std(torch.cat(embeddings)),
        }


def forward_views(network, views: torch.Tensor, per_view: bool = True):
    """(embedding, projection, prediction) of ``(S, M, 2, 1, *patch)`` views, rows in (scan, crop, view) order.

    ``per_view``: one pass per (crop, view) over the S scans, as the authors batched them; otherwise one pass.
    """
    if not per_view:
        return network(views.flatten(0, 2), project=True)
    scans, crops = views.shape[:2]
    if scans < 2:
        raise ValueError(
            "forward_per_view normalises each patch with the patches of other scans (batch norm over the scans of a "
            f"pass, as the authors' 4 per GPU), but this pass holds {scans} scan. Use scans_per_batch (and "
            "scans_per_forward) >= 2, or --forward_per_view false to put all views of the batch through one pass."
        )
    outputs = [network(views[:, m, v], project=True) for m in range(crops) for v in range(2)]

    def rows(k):  # (crop, view) passes of (S, D) -> (S * M * 2, D) in the joint pass's order
        return None if outputs[0][k] is None else torch.stack([o[k] for o in outputs], 1).flatten(0, 1)

    return rows(0), rows(1), rows(2)
