"""Vectorised Atari environments with the Machado et al. (2018) protocol."""

from envs.atari import (
    NUM_ACTIONS,
    AtariSettings,
    VectorAtari,
    derive_seed,
    make_vector_env,
    resolve_game,
)
from envs.scores import human_normalized_score, reference_scores

__all__ = [
    "NUM_ACTIONS",
    "AtariSettings",
    "VectorAtari",
    "derive_seed",
    "make_vector_env",
    "resolve_game",
    "human_normalized_score",
    "reference_scores",
]
