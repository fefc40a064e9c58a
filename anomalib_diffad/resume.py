# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Exact resume: every training epoch draws its randomness from a seed that the checkpoint carries.

A run resumed with ``--ckpt_path`` from a checkpoint written at the end of an epoch ends bit-identical to an
uninterrupted run (weights, EMA, optimizer, learning-rate schedule). ``DiffAD`` draws the seed once per run
(:func:`draw_train_seed`), reseeds torch's global RNG at the start of every training epoch (:func:`epoch_seed`)
and keeps the seed in the checkpoint under :data:`TRAIN_SEED_KEY`.

Timesteps, noise, random crops and the shuffling order of an epoch all draw from that RNG, so an epoch's
randomness does not depend on what ran before it. Lightning neither saves nor restores RNG states, and its
resume path iterates the dataloaders a different number of times. Checkpoints written inside an epoch
(``every_n_train_steps``) resume without the reseeding and are not replayed exactly.
"""

import numpy as np
import torch

TRAIN_SEED_KEY = "diffad_train_seed"


def epoch_seed(train_seed: int, step: int, rank: int) -> int:
    """Seed of the global torch RNG for the epoch that starts at optimizer step ``step`` on one rank."""
    return int(np.random.SeedSequence([train_seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def draw_train_seed() -> int:
    """A run's training seed, drawn from the global RNG (so ``seed_everything`` controls it)."""
    return int(torch.empty((), dtype=torch.int64).random_()) & (2**62 - 1)
