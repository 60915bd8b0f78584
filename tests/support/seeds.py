"""Seeds for randomized tests: printed, and taken from the environment to reproduce a failure."""

from __future__ import annotations

import os
import random

SEED_VARIABLE = "AFL_FAULT_SEED"


def seeded_random(test: str) -> tuple[random.Random, int]:
    """A Random for ``test`` and its seed (``AFL_FAULT_SEED`` when set, else a fresh one), printed."""
    raw = os.environ.get(SEED_VARIABLE)
    seed = int(raw) if raw else random.SystemRandom().randrange(2**32)
    print(f"{test}: seed {seed} (rerun with {SEED_VARIABLE}={seed})")
    return random.Random(seed), seed
