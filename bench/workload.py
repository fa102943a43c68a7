"""The request mixes: the same texts, in the same order, for every system of a run.

Two mixes (:data:`MIXES`), each drawn with a fixed seed:

* ``news``: one to four news-style sentences (14-64 tokens), the mix the bench always had;
* ``short``: one sentence each (14-18 tokens), as a chat message or a search query would be.

Length matters: a batch is padded to its longest text, so the mix, not only its size, sets
MiniLM's cost; with short texts a model call's fixed cost weighs more, which is where
batching should pay on a CPU. The ``identity`` pipeline gets the same documents.
"""

from __future__ import annotations

import random
from typing import Any

from bench.settings import SEED

SENTENCES = (
    "The central bank left interest rates unchanged for the third month in a row.",
    "Shares of the chipmaker rose after it raised its forecast for the year.",
    "The striker scored twice as the home side came back to win the cup final.",
    "A new vaccine cut hospital admissions by half in a large clinical trial.",
    "Parliament will vote next week on the government's plan to reform pensions.",
    "Astronomers spotted water vapour in the atmosphere of a distant planet.",
    "The studio's animated sequel opened at the top of the weekend box office.",
    "The update patches a flaw that let attackers take over unlocked phones.",
    "Doctors warn that heat waves put older people with heart disease at risk.",
    "The coalition collapsed after the junior partner walked out of the talks.",
    "Researchers trained a model that predicts protein shapes from their sequence.",
    "The band announced a reunion tour with dates across three continents.",
    "Retail sales fell in November as shoppers held back before the holidays.",
    "She won the marathon in a course record despite the strong head wind.",
    "Engineers at the start-up built a battery that charges in ten minutes.",
    "The senator launched her campaign with a promise to cut healthcare costs.",
    "The telescope's first images show galaxies formed soon after the big bang.",
    "A study of ten thousand adults links poor sleep to a higher risk of diabetes.",
    "The streaming service will raise its prices for subscribers in Europe.",
    "The airline ordered sixty new jets in a deal worth several billion dollars.",
)


#: Request mix → (fewest, most) sentences per text. The first is the default mix.
MIXES = {"news": (1, 4), "short": (1, 1)}


def texts(count: int, seed: int = SEED, mix: str = "news") -> list[str]:
    """``count`` texts of the mix's number of sentences, the same for a given seed and mix.

    Raises:
        KeyError: No such mix.
    """
    fewest, most = MIXES[mix]
    rng = random.Random(seed)
    return [" ".join(rng.sample(SENTENCES, rng.randint(fewest, most))) for _ in range(count)]


def inputs(count: int, seed: int = SEED, mix: str = "news") -> list[dict[str, Any]]:
    """``count`` pipeline inputs (``{"text": ...}``) of ``mix``, valid for ``topics`` and ``identity``."""
    return [{"text": t} for t in texts(count, seed, mix)]


def arrivals(rate: float, duration_s: float, seed: int = SEED) -> list[float]:
    """Poisson arrival times (seconds from the start) at ``rate`` per second over ``duration_s``.

    Fixed by the seed: every system of a run is offered the very same schedule.
    """
    rng = random.Random(seed ^ 0x5EED)
    times, t = [], rng.expovariate(rate)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate)
    return times
