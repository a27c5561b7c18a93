"""Random and human reference scores (the table used by DQN Zoo and Dopamine)."""

from __future__ import annotations

import math

# game: (random, human)
_REFERENCE = {
    "Pong": (-20.7, 14.6),
    "Breakout": (1.7, 30.5),
    "SpaceInvaders": (148.0, 1668.7),
    "BeamRider": (363.9, 16926.5),
    "Enduro": (0.0, 860.5),
    "Seaquest": (68.4, 42054.7),
    "Qbert": (163.9, 13455.0),
    "MsPacman": (307.3, 6951.6),
    "Krull": (1598.0, 2665.5),
    "Hero": (1027.0, 30826.4),
    "StarGunner": (664.0, 10250.0),
    "Boxing": (0.1, 12.1),
    "RoadRunner": (11.5, 7845.0),
    "Freeway": (0.0, 29.6),
    "Asterix": (210.0, 8503.3),
    "Atlantis": (12850.0, 29028.1),
    "Kangaroo": (52.0, 3035.0),
}


def reference_scores(game: str) -> tuple[float, float] | None:
    """(random, human) scores for a canonical game name, or None when unknown."""
    return _REFERENCE.get(game)


def human_normalized_score(game: str, score: float) -> float:
    """(score - random) / (human - random); NaN for games without reference scores."""
    ref = _REFERENCE.get(game)
    if ref is None:
        return math.nan
    random_score, human_score = ref
    return (score - random_score) / (human_score - random_score)
