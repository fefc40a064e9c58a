# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Exact resume: every training epoch draws its randomness from a seed that the checkpoint carries.

A run resumed with ``--ckpt_path`` from a checkpoint written at the end of an epoch ends bit-identical to an
uninterrupted run (weights, EMA, optimizer, learning-rate schedule).
"""

from typing import Any

import numpy as np
import torch

TRAIN_SEED_KEY = "diffad_train_seed"


def epoch_seed(train_seed: int, step: int, rank: int) -> int:
    """Seed of the global torch RNG for the epoch that starts at optimizer step ``step`` on one rank."""
    return int(np.random.SeedSequence([train_seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


class ExactResumeMixin:
    """Draw a training seed once per run, reseed every epoch from it, and keep it in the checkpoint."""

    _train_seed: int | None = None

    def draw_train_seed(self) -> None:
        """Draw the run's training seed once, from the global RNG (so ``seed_everything`` controls it)."""
        if self._train_seed is None:
            self._train_seed = int(torch.empty((), dtype=torch.int64).random_()) & (2**62 - 1)

    def on_train_epoch_start(self) -> None:
        """Reseed torch's global RNG from (training seed, global step, rank).

        Timesteps, noise, random crops and the shuffling order of the epoch all draw from it, so an epoch's
        randomness does not depend on what ran before it (a crashed run resumed from an epoch-boundary
        checkpoint ends bit-identical to an uninterrupted one). Lightning neither saves nor restores RNG
        states, and its resume path iterates the dataloaders a different number of times. Checkpoints
        written inside an epoch (``every_n_train_steps``) resume without this hook and are not replayed exactly.
        """
        torch.manual_seed(epoch_seed(self._train_seed, self.global_step, self.global_rank))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the training seed with the checkpoint."""
        super().on_save_checkpoint(checkpoint)
        if self._train_seed is not None:
            checkpoint[TRAIN_SEED_KEY] = self._train_seed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume with the checkpoint's training seed."""
        super().on_load_checkpoint(checkpoint)
        if TRAIN_SEED_KEY in checkpoint:
            self._train_seed = int(checkpoint[TRAIN_SEED_KEY])
