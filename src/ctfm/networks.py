"""The CT-FM encoder and the networks built around it, all from MONAI components.

- :func:`build_encoder`: MONAI ``SegResEncoder`` with the CT-FM topology (77,760,992 parameters).
- :class:`CTFMEmbedder`: encoder -> global average pool -> (B, 512). The ``network_def`` of
  anything that outputs embeddings.
- :func:`build_segmentation_network`: MONAI ``SegResNetDS`` whose ``encoder`` is the CT-FM encoder,
  so pretrained weights drop in with the ``encoder.`` prefix.
- :class:`DropoutSegResNetDS`: the same network with channel dropout on the encoder's features, for
  Monte Carlo dropout uncertainty (MONAI Label's epistemic scoring passes ``dropout``).
- :func:`find_encoder`: the one ``SegResEncoder`` inside any of these (or a user's own model).
"""

from __future__ import annotations

import torch
from monai.networks.nets import SegResNetDS
from monai.networks.nets.segresnet_ds import SegResEncoder
from torch import nn

from ctfm.registry import ENCODER_CONFIG, ENCODER_NORM


def build_encoder(**overrides) -> SegResEncoder:
    """The CT-FM backbone; ``overrides`` change SegResEncoder arguments (e.g. ``in_channels``)."""
    kwargs = {**ENCODER_CONFIG, "norm": ENCODER_NORM, **overrides}
    return SegResEncoder(**kwargs)


class CTFMEmbedder(nn.Module):
    """Encoder -> ``AdaptiveAvgPool3d(1)`` of the last stage -> flatten: one 512-d vector per input.

    State-dict keys are the encoder's with the prefix ``encoder.``.
    """

    def __init__(self, encoder: SegResEncoder | None = None, **encoder_overrides):
        super().__init__()
        self.encoder = encoder if encoder is not None else build_encoder(**encoder_overrides)
        self.pool = nn.AdaptiveAvgPool3d(1)
        # A plain int attribute (not a property reading a module constant) so TorchScript compiles the module;
        # the width of the encoder's last stage: 512 for CT-FM.
        self.out_features: int = self.encoder.init_filters * 2 ** (len(self.encoder.blocks_down) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encoder(x)[-1]).flatten(1)


class DropoutSegResNetDS(SegResNetDS):
    """``SegResNetDS`` whose decoder reads the encoder's feature maps through channel dropout.

    Dropout has no parameters, so the state dict is exactly ``SegResNetDS``'s and trained weights load
    either way. Like every dropout it acts in ``train()`` mode only; for Monte Carlo dropout keep the
    network in ``eval()`` (batch norm on its running statistics) and put only the dropout module in ``train()``.
    """

    def __init__(self, *args, dropout: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.dropout = nn.Dropout3d(dropout) if self.spatial_dims == 3 else nn.Dropout2d(dropout)
        self.encoder.register_forward_hook(self._drop_features)

    def _drop_features(self, encoder, inputs, features):
        return [self.dropout(f) for f in features]


def build_segmentation_network(out_channels: int, dsdepth: int = 4, dropout: float = 0.0, **overrides) -> SegResNetDS:
    """MONAI ``SegResNetDS`` with the CT-FM encoder topology and batch norm; :class:`DropoutSegResNetDS` when
    ``dropout`` > 0 (the argument MONAI Label sets for epistemic scoring)."""
    kwargs = {**ENCODER_CONFIG, "norm": ENCODER_NORM, "out_channels": out_channels, "dsdepth": dsdepth, **overrides}
    return DropoutSegResNetDS(**kwargs, dropout=dropout) if dropout > 0 else SegResNetDS(**kwargs)


def find_encoder(model: nn.Module) -> SegResEncoder:
    """Return the single ``SegResEncoder`` in ``model`` (the model itself, ``.encoder``, a backbone...)."""
    if isinstance(model, SegResEncoder):
        return model
    found = [m for m in model.modules() if isinstance(m, SegResEncoder)]
    if len(found) != 1:
        raise ValueError(
            f"{type(model).__name__} holds {len(found)} SegResEncoder modules; CT-FM weights go into exactly one. "
            "Pass that submodule itself (e.g. model.encoder)."
        )
    return found[0]


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` runs bfloat16 matrix multiplies natively (AVX512-BF16/AMX CPUs, recent GPUs); elsewhere
    bf16 autocast would only slow the encoder down."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False
