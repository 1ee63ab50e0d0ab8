"""A small seeded evolutionary search over sparse-update schemes (the knapsack's rival).

Each generation keeps the ``elite`` best schemes and fills the rest of the population with
children: two parents by tournament (best of two drawn at random), a uniform crossover,
and each gene mutated with probability 1/genes to a random option of its group. A scheme
is scored by its summed gain if the real estimate of its plan fits the budget; one that
does not fit scores below every fitting one, the less over budget the better. The
population starts from the empty scheme and random ones (each gene frozen with
probability 1/2, else a random option), drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import numpy as np

from ._search_space import Genome, Space


def _score(space: Space, genome: Genome) -> float:
    if space.fits(genome):
        return space.gain(genome)
    return -1e6 - (space.need(genome) - space.budget) / max(1, space.budget)


def _random(rng: np.random.Generator, sizes: list[int]) -> Genome:
    return tuple(int(rng.integers(1, n)) if n > 1 and rng.random() < 0.5 else 0
                 for n in sizes)


def evolution_search(space: Space, seed: int = 0, population: int = 24,
                     generations: int = 30, elite: int = 4) -> Genome:
    """The fitting scheme of largest gain seen over ``generations`` (the empty scheme
    when nothing else fits)."""
    rng = np.random.default_rng(seed)
    sizes = [len(group) for group in space.gains]
    pool = [space.empty] + [_random(rng, sizes) for _ in range(population - 1)]
    best = space.empty
    for _ in range(generations + 1):
        scored = sorted(pool, key=lambda g: (-_score(space, g), g))
        for genome in scored:
            if space.fits(genome) and space.gain(genome) > space.gain(best):
                best = genome
        children = list(dict.fromkeys(scored[:elite]))
        while len(children) < population:
            a, b = (min(rng.choice(len(scored), 2, replace=False)) for _ in range(2))
            mix = rng.random(len(sizes)) < 0.5
            child = [x if m else y for x, y, m in zip(scored[a], scored[b], mix, strict=True)]
            for gene, n in enumerate(sizes):
                if n > 1 and rng.random() < 1 / len(sizes):
                    child[gene] = int(rng.integers(0, n))
            children.append(tuple(int(v) for v in child))
        pool = children
    return best
