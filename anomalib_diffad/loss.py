# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""DiffAD training loss: ``L = w_simple L_simple + w_vb L_vb + w_feat L_feat`` (all weights 1 in the paper)."""

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from anomalib_diffad.diffusion import DiffusionSchedule, variational_bound_terms
from anomalib_diffad.torch_model import TrainOutput


class DiffADLoss(nn.Module):
    """Noise MSE, variational bound for the learned variance (mean stopped) and feature MSE.

    Args:
        schedule: Diffusion schedule shared with the model.
        simple_weight: Weight of ``L_simple`` (epsilon MSE).
        vb_weight: Weight of ``L_vb`` (bits per dimension; trains the variance only).
        feature_weight: Weight of ``L_feat`` (MSE between predicted and pretrained features; none in feature space).
        discrete: The diffused data are 8-bit images (decoder likelihood of ``L_vb`` at ``t = 0``); ``False`` for
            continuous features.

    Example:
        >>> from anomalib_diffad.spaces import PixelSpace
        >>> from anomalib_diffad.torch_model import DiffADModel
        >>> space = PixelSpace(block_out_channels=(16, 32), attention_levels=(), norm_num_groups=8)
        >>> model = DiffADModel(space, image_size=(32, 32), layers=("blocks.0", "blocks.1"))
        >>> losses = DiffADLoss(model.schedule)(model.train()(torch.zeros(2, 3, 32, 32)))
        >>> sorted(losses)
        ['feature', 'loss', 'simple', 'vb']
    """

    def __init__(
        self,
        schedule: DiffusionSchedule,
        simple_weight: float = 1.0,
        vb_weight: float = 1.0,
        feature_weight: float = 1.0,
        discrete: bool = True,
    ) -> None:
        super().__init__()
        self.discrete = discrete
        self.schedule = schedule
        self.simple_weight = simple_weight
        self.vb_weight = vb_weight
        self.feature_weight = feature_weight

    def forward(self, outputs: TrainOutput) -> dict[str, torch.Tensor]:
        """Return the total ``loss`` and its three terms."""
        prediction = outputs.prediction
        simple = F.mse_loss(prediction.eps, outputs.noise)
        vb = variational_bound_terms(
            self.schedule,
            outputs.x0,
            outputs.xt,
            outputs.t,
            prediction.eps,
            prediction.v,
            discrete=self.discrete,
        ).mean()
        if outputs.target_features is None:
            feature = torch.zeros_like(simple)
        else:
            feature = F.mse_loss(prediction.features, outputs.target_features)
        loss = self.simple_weight * simple + self.vb_weight * vb + self.feature_weight * feature
        return {"loss": loss, "simple": simple, "vb": vb, "feature": feature}
