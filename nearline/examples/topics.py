"""The ``topics`` example: MiniLM sentence embeddings, then a topic classification head.

Pipeline steps (workers): :func:`tokenizer` builds the batch tokenization step (WordPiece from
the ``minilm`` model folder's ``tokenizer.json``, truncation at 128 tokens, padding to the
batch's longest text); the ``minilm`` model embeds, the ``topics`` model scores; :func:`labeller`
builds the step that names the scores with the ``topics`` model's labels file.

Build (``nearline models build``): :func:`train_head` makes the head, a ``Linear(384 → 7)`` with
softmax, whose weights start as the normalised mean embedding of each topic's descriptions and
are refined on a small labelled set (:data:`EXAMPLES`) with a fixed seed. :data:`HEADS` gives
each version its seed and pull: v1 is the endpoint's live head, v2 a second one (another seed,
held less close to the descriptions) that the example endpoint deploys with no traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

from nearline.errors import InvalidInput

if TYPE_CHECKING:
    import torch

    from nearline.models.repository import ModelRepository

SEED = 0
MAX_TOKENS = 128
TOKENIZER_FILE = "tokenizer.json"
_SCALE = 20.0  # cosine similarities span ~0.1..0.7: scale so softmax is decisive before refining
_STEPS = 200
_PULL = 1.0  # L2 pull of the refined weights toward the description prototypes (keeps them general)
#: Each head version (``models/topics/<v>``): its (seed, pull).
HEADS = {1: (SEED, _PULL), 2: (1, 0.5)}


def load_tokenizer(path: str | Path, max_length: int = MAX_TOKENS) -> Tokenizer:
    """A fast tokenizer that truncates at ``max_length`` and pads to the longest text of a batch."""
    tokenizer = Tokenizer.from_file(str(path))
    padding = tokenizer.padding or {}
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=padding.get("pad_id", 0), pad_token=padding.get("pad_token", "[PAD]"))
    return tokenizer


def encode(tokenizer: Tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask of ``texts``, int64 ``[len(texts), longest]``."""
    encodings = tokenizer.encode_batch(texts)
    ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
    mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


def tokenizer(
    repository: ModelRepository, model: str = "minilm", max_length: int = MAX_TOKENS
) -> Callable[[list[dict[str, Any]]], list[dict[str, np.ndarray]]]:
    """Factory of the batch tokenization step: ``[{"text"}...]`` → ``[{"input_ids", "attention_mask"}...]``.

    Rows are padded to the longest text of the batch, so the model step can stack them.
    """
    tok = load_tokenizer(repository.asset(model, TOKENIZER_FILE), max_length)

    def tokenize(items: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        texts = [item["text"] for item in items]
        if not all(isinstance(t, str) for t in texts):
            raise InvalidInput("text must be a string")
        ids, mask = encode(tok, texts)
        return [{"input_ids": ids[i], "attention_mask": mask[i]} for i in range(len(items))]

    return tokenize


def labeller(
    repository: ModelRepository, model: str = "topics", key: str = "scores"
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Factory of the post-processing step: ``{key: float32[n]}`` → ``{"label", "scores": {topic: p}}``."""
    labels = repository.labels(model)

    def label(item: dict[str, Any]) -> dict[str, Any]:
        scores = item[key]
        if len(scores) != len(labels):
            raise RuntimeError(f"{len(scores)} scores for {len(labels)} labels of model '{model}'")
        return {
            "label": labels[int(np.argmax(scores))],
            "scores": dict(zip(labels, map(float, scores), strict=True)),
        }

    return label


def train_head(
    embed: Callable[[Sequence[str]], np.ndarray], seed: int = SEED, pull: float = _PULL
) -> tuple[torch.nn.Module, float]:
    """Make the topic head from description prototypes refined on :data:`EXAMPLES`.

    Args:
        embed: Sentences → L2-normalised embeddings ``[n, 384]`` (the exported MiniLM).
        seed: torch seed.
        pull: Weight of the L2 pull toward the description prototypes.

    Returns:
        The head (embedding in, softmax over :data:`TOPICS` out, eval mode) and its accuracy on
        the labelled set.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    prototypes = np.stack([embed(DESCRIPTIONS[t]).mean(axis=0) for t in TOPICS])
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    texts = [s for t in TOPICS for s in (*DESCRIPTIONS[t], *EXAMPLES[t])]
    labels = [i for i, t in enumerate(TOPICS) for _ in (*DESCRIPTIONS[t], *EXAMPLES[t])]
    features, targets = torch.from_numpy(embed(texts)), torch.tensor(labels)
    anchor = torch.from_numpy(prototypes * _SCALE)
    linear = nn.Linear(prototypes.shape[1], len(TOPICS))
    with torch.no_grad():
        linear.weight.copy_(anchor)
        linear.bias.zero_()
    optimiser = torch.optim.Adam(linear.parameters(), lr=0.01)
    for _ in range(_STEPS):
        optimiser.zero_grad()
        drift = (linear.weight - anchor).pow(2).sum() / anchor.pow(2).sum()
        (nn.functional.cross_entropy(linear(features), targets) + pull * drift).backward()
        optimiser.step()
    head = nn.Sequential(linear, nn.Softmax(dim=1)).eval()
    with torch.inference_mode():
        accuracy = float((head(features).argmax(dim=1) == targets).float().mean())
    return head, accuracy


#: What each topic is about: the head's starting weights are their mean embeddings.
DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "business": (
        "News about companies, markets, trade and the economy.",
        "Corporate earnings, mergers, acquisitions and stock prices.",
        "Banks, interest rates, inflation, investors and financial markets.",
        "Startups, retail sales, jobs and industry.",
    ),
    "entertainment": (
        "News about films, television, music and celebrities.",
        "Movie releases, box office results, actors and directors.",
        "Concerts, albums, singers, bands and award shows.",
        "Streaming series, video games, books and popular culture.",
    ),
    "health": (
        "News about medicine, disease, hospitals and public health.",
        "Doctors, patients, treatments, vaccines and clinical care.",
        "Diet, exercise, sleep, mental health and wellbeing.",
        "Epidemics, infections, drugs and health services.",
    ),
    "politics": (
        "News about governments, elections, parties and politicians.",
        "Parliament, congress, laws, policy and votes.",
        "Presidents, prime ministers, ministers and diplomacy.",
        "Campaigns, referendums, courts and political debate.",
    ),
    "science": (
        "News about scientific research and discoveries.",
        "Physics, chemistry, biology, astronomy and space exploration.",
        "Scientists, experiments, laboratories and academic studies.",
        "Climate, fossils, genes, animals and the natural world.",
    ),
    "sports": (
        "News about sports, athletes, teams and competitions.",
        "Football, basketball, tennis, cricket, athletics and the Olympics.",
        "Matches, tournaments, championships, goals and scores.",
        "Coaches, players, transfers, leagues and stadiums.",
    ),
    "technology": (
        "News about technology, computers, software and the internet.",
        "Smartphones, gadgets, apps and consumer electronics.",
        "Artificial intelligence, cloud computing, cybersecurity and data.",
        "Tech companies, programming, chips and digital products.",
    ),
}

#: A small labelled set the head is refined on (the tests use other sentences).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "business": (
        "Shares fell sharply after the retailer cut its profit forecast.",
        "The central bank raised interest rates by a quarter point.",
        "The two airlines agreed to merge in a deal worth four billion dollars.",
        "Unemployment dropped to its lowest level in a decade.",
        "Oil prices climbed as supply concerns grew.",
        "The startup raised fifty million in its latest funding round.",
        "Quarterly revenue beat analyst expectations.",
        "The carmaker will cut two thousand jobs to reduce costs.",
        "Investors moved money into government bonds.",
        "Consumer spending slowed during the holiday season.",
    ),
    "entertainment": (
        "The sequel topped the box office on its opening weekend.",
        "The singer announced a world tour for next summer.",
        "The drama series was renewed for a third season.",
        "She won the award for best actress at the ceremony.",
        "The band released its first album in ten years.",
        "The director is casting the lead role for his new film.",
        "Fans queued overnight for the premiere.",
        "The comedian's special is now streaming.",
        "The novel is being adapted into a television show.",
        "The festival line-up features several famous rappers.",
    ),
    "health": (
        "Doctors recommend a flu vaccine for older adults.",
        "The hospital opened a new cancer treatment centre.",
        "Regular exercise lowers the risk of heart disease.",
        "The clinical trial showed the drug reduced symptoms.",
        "Cases of measles are rising among unvaccinated children.",
        "Nurses warned of long waiting times in emergency rooms.",
        "Getting enough sleep improves mental health.",
        "A diet high in sugar increases the risk of diabetes.",
        "The health service will fund the new therapy.",
        "Patients with the infection were treated with antibiotics.",
    ),
    "politics": (
        "The senate passed the bill by a narrow margin.",
        "The prime minister called an early general election.",
        "Voters head to the polls on Sunday.",
        "The opposition party criticised the government's budget.",
        "The president signed an executive order on immigration.",
        "The minister resigned after the scandal.",
        "Lawmakers debated the new tax policy for hours.",
        "The two countries' leaders met for peace talks.",
        "The candidate launched her campaign for governor.",
        "The coalition government collapsed after the vote.",
    ),
    "science": (
        "Astronomers discovered a planet orbiting a nearby star.",
        "Researchers sequenced the genome of an ancient plant.",
        "The rover collected rock samples on Mars.",
        "Physicists measured the particle's mass with new precision.",
        "A fossil of a feathered dinosaur was found in China.",
        "The study found that bees can recognise human faces.",
        "Chemists developed a catalyst that splits water with sunlight.",
        "Scientists observed gravitational waves from colliding black holes.",
        "The telescope captured images of a distant galaxy.",
        "Ocean temperatures are rising faster than models predicted.",
    ),
    "sports": (
        "The striker scored twice in the second half.",
        "She won the final in straight sets.",
        "The team clinched the championship with a late goal.",
        "The sprinter broke the world record in the hundred metres.",
        "The club signed the midfielder on a five-year contract.",
        "The coach was sacked after a run of defeats.",
        "The match was postponed because of heavy rain.",
        "He hit a century in the test match.",
        "The marathon attracted forty thousand runners.",
        "The quarterback threw three touchdown passes.",
    ),
    "technology": (
        "The company unveiled its new smartphone with a faster chip.",
        "The update fixes a security flaw in the operating system.",
        "The chatbot uses a large language model.",
        "Hackers stole millions of passwords in the data breach.",
        "The cloud provider launched new servers for machine learning.",
        "Developers can now write apps in the new programming language.",
        "The laptop has a longer battery life than its predecessor.",
        "The social network changed how its recommendation algorithm works.",
        "Engineers built a faster processor for data centres.",
        "The browser will block third-party cookies by default.",
    ),
}

#: Topic names, in the order of the head's output columns.
TOPICS = tuple(sorted(DESCRIPTIONS))
