"""Test-side references for the companion metrics (CLIP-S, RefCLIP-S, CLIP-R-Precision, InfoNCE).

Two kinds, both written here from the formulas and from reading the MID paper's code (naver-ai/mid.metric,
``metrics/clips.py``, ``r_precision.py``, ``infonce.py``; none of its code is copied):

* ``naive_*``: straightforward implementations of each formula, with full ``M x M`` similarity matrices, Python loops
  and exact integer binomials, which share no code with the package;
* ``Official*Twin``: store-all twins of the official metrics: they keep every feature in float64, compute on the
  whole matrix at the end, draw random negatives like the official R-precision, cast the result to float32 like
  the official code, and silently truncate beyond ``limit`` (a flaw the package does not repeat).

It also holds the data generators and the :class:`~_tester.MetricCase` builders that several test files share.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from _tester import MetricCase
from torch import Tensor

from mid_metric import CLIPRPrecision, CLIPScore, InfoNCE, RefCLIPScore
from mid_metric.functional import clip_r_precision, clip_score, infonce, ref_clip_score

TIE = 1e-12  # the documented tie tolerance of the package's R-precision


# ------------------------------------------------------------------------------------------------- data
def aligned_pairs(
    m: int, d: int, noise: float = 1.0, seed: int = 0, duplicates: int = 0, flipped: float = 0.1
) -> tuple[Tensor, Tensor]:
    """CLIP-like float32 unit features: captions at random, images near their captions (``noise`` apart).

    ``duplicates`` captions are copies of earlier ones (identical prompts, which tie in R-precision), and a
    fraction ``flipped`` of the images point away from their captions, so that some cosines are negative.
    """
    generator = torch.Generator().manual_seed(seed)
    texts = torch.randn(m, d, generator=generator)
    for k in range(duplicates):
        texts[m - 1 - k] = texts[k]
    images = texts + noise * torch.randn(m, d, generator=generator)
    images[: int(m * flipped)] *= -1
    return torch.nn.functional.normalize(images, dim=1), torch.nn.functional.normalize(texts, dim=1)


def references_for(texts: Tensor, seed: int = 0, most: int = 4) -> list[Tensor]:
    """1 to ``most`` reference captions per pair, near the candidate caption or not (float32, unit rows)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for row in texts:
        count = int(torch.randint(1, most + 1, (1,), generator=generator))
        scale = float(torch.rand(1, generator=generator)) * 3
        refs = row + scale * torch.randn(count, row.shape[0], generator=generator)
        if count > 2:
            refs[0] = -row  # a reference pointing away from the caption
        out.append(torch.nn.functional.normalize(refs, dim=1))
    return out


def pad_references(references: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The same references as a ``(B, R, D)`` tensor (padding filled with NaN, never read) and its mask."""
    most = max(r.shape[0] for r in references)
    padded = torch.full((len(references), most, references[0].shape[1]), float("nan"))
    mask = torch.zeros(len(references), most, dtype=torch.bool)
    for i, refs in enumerate(references):
        padded[i, : refs.shape[0]] = refs
        mask[i, : refs.shape[0]] = True
    return padded, mask


def batches(images: Tensor, texts: Tensor, sizes: list[int], *extra: list) -> list[tuple[tuple, dict]]:
    """Cut the pairs into ``update`` calls of the given sizes (``extra``: more per-pair arguments)."""
    calls, start = [], 0
    for size in sizes:
        stop = start + size
        calls.append(((images[start:stop], texts[start:stop], *(e[start:stop] for e in extra)), {}))
        start = stop
    assert start == images.shape[0]
    return calls


# ------------------------------------------------------------------------------------- independent refs
def naive_cosine_matrix(images: Tensor, texts: Tensor) -> Tensor:
    """``S[j, k] = <v_j, c_k> / (|v_j| |c_k|)`` in float64, the whole matrix."""
    v, c = images.double(), texts.double()
    return (v @ c.T) / (v.norm(dim=1, keepdim=True) * c.norm(dim=1)[None, :])


def naive_pair_cosines(images: Tensor, texts: Tensor) -> Tensor:
    v, c = images.double(), texts.double()
    return (v * c).sum(dim=1) / (v.norm(dim=1) * c.norm(dim=1))


def naive_clip_per_pair(images: Tensor, texts: Tensor, weight: float = 2.5, clamp: bool = True) -> Tensor:
    cosines = naive_pair_cosines(images, texts)
    return weight * (torch.clamp(cosines, min=0) if clamp else cosines)


def naive_clip_score(images: Tensor, texts: Tensor, weight: float = 2.5, clamp: bool = True) -> float:
    return float(naive_clip_per_pair(images, texts, weight, clamp).mean())


def naive_refclip_per_pair(images: Tensor, texts: Tensor, references: list[Tensor], weight: float = 2.5) -> Tensor:
    values = []
    for v, c, refs in zip(images, texts, references):
        a = weight * max(float(naive_pair_cosines(v[None], c[None])[0]), 0.0)
        b = max(max(float(naive_pair_cosines(c[None].expand_as(refs), refs)[r]) for r in range(refs.shape[0])), 0.0)
        values.append(0.0 if a + b == 0 else 2 * a * b / (a + b))
    return torch.tensor(values, dtype=torch.float64)


def naive_refclip(images: Tensor, texts: Tensor, references: list[Tensor], weight: float = 2.5) -> float:
    return float(naive_refclip_per_pair(images, texts, references, weight).mean())


def naive_r_precision_per_pair(images: Tensor, texts: Tensor, n: int = 99, negatives: str = "replacement") -> Tensor:
    """Each pair's hit probability from the whole similarity matrix, with exact binomials for distinct negatives."""
    scores = naive_cosine_matrix(images, texts)
    m = scores.shape[0]
    values = []
    for j in range(m):
        own = scores[j, j]
        if negatives == "replacement":
            c = int((scores[j] <= own + TIE).sum())
            values.append((c / m) ** n)
        else:
            b = int((scores[j] < own - TIE).sum())
            values.append(math.comb(b, n) / math.comb(m - 1, n))
    return torch.tensor(values, dtype=torch.float64)


def naive_r_precision(images: Tensor, texts: Tensor, n: int = 99, negatives: str = "replacement") -> float:
    return float(naive_r_precision_per_pair(images, texts, n, negatives).mean())


def naive_infonce_per_pair(images: Tensor, texts: Tensor, temperature: float = 1.0) -> Tensor:
    return torch.softmax(naive_cosine_matrix(images, texts) / temperature, dim=1).diagonal()


def naive_infonce(images: Tensor, texts: Tensor, temperature: float = 1.0) -> float:
    return float(naive_infonce_per_pair(images, texts, temperature).mean())


def naive_infonce_bound(images: Tensor, texts: Tensor, temperature: float) -> float:
    log_p = torch.log_softmax(naive_cosine_matrix(images, texts) / temperature, dim=1).diagonal()
    return math.log(images.shape[0]) + float(log_p.mean())


# ------------------------------------------------------------------------------------ store-all twins
class _StoreAllTwin:
    """Keeps every (real image, text, generated image) row in float64, as the official metrics do."""

    def __init__(self, limit: int = 30_000) -> None:
        self.limit = limit
        self.x: list[Tensor] = []
        self.y: list[Tensor] = []
        self.x0: list[Tensor] = []
        self.input_dtype = torch.float32

    def update(self, x: Tensor, y: Tensor, x0: Tensor) -> None:
        self.input_dtype = x.dtype
        self.x.append(x.double())
        self.y.append(y.double())
        self.x0.append(x0.double())

    def _features(self) -> tuple[Tensor, Tensor, Tensor]:
        x, y, x0 = torch.cat(self.x), torch.cat(self.y), torch.cat(self.x0)
        keep = min(self.limit, x.shape[0])  # the official code drops the pairs beyond `limit` without a word
        return x[:keep], y[:keep], x0[:keep]

    def compute(self, reduction: bool = True) -> Tensor:
        _, y, x0 = self._features()
        per_pair = self._per_pair(y, x0)
        return (per_pair.mean() if reduction else per_pair).to(self.input_dtype)

    def _per_pair(self, y: Tensor, x0: Tensor) -> Tensor:
        raise NotImplementedError


class OfficialClipScoreTwin(_StoreAllTwin):
    """CLIP-S of the official code: 2.5 times the raw dot product of the (unit) features, no clamp, in float32.

    The official "Caption" CLIP-S is the same computation with a caption's text features in the place of ``x0``.
    """

    def compute(self, reduction: bool = True) -> Tensor:
        _, y, x0 = self._features()
        dots = (x0 * y).sum(dim=-1).float()
        return (2.5 * dots.mean() if reduction else 2.5 * dots).to(self.input_dtype)


class OfficialRPrecisionTwin(_StoreAllTwin):
    """R-precision of the official code: 99 negatives ``y[randperm(N)]``, a hit when index 0 wins ``max``."""

    def compute(self, reduction: bool = True) -> Tensor:
        _, y, x0 = self._features()
        columns = [(x0 * y).sum(dim=-1)]
        for _ in range(99):
            columns.append((x0 * y[torch.randperm(y.shape[0])]).sum(dim=-1))
        hits = (torch.stack(columns, dim=-1).max(dim=-1).indices == 0).float()
        return (hits.mean() if reduction else hits).to(self.input_dtype)


class OfficialInfoNCETwin(_StoreAllTwin):
    """InfoNCE of the official code: the diagonal of the softmax of the whole ``x0 y^T`` matrix, in float32."""

    def compute(self, reduction: bool = True) -> Tensor:
        _, y, x0 = self._features()
        probabilities = (x0 @ y.T).softmax(dim=-1).diagonal().float()
        return (probabilities.mean() if reduction else probabilities).to(self.input_dtype)


# ---------------------------------------------------------------------------------------- metric cases
def _with_real_batch(calls: list, images: Tensor, texts: Tensor) -> list:
    """Put a batch of reference pairs (``real=True``, which the companions skip) among the candidate calls."""
    return calls[:1] + [((images, texts), {"real": True})] + calls[1:]


def clip_score_cases(d: int = 8) -> dict[str, MetricCase]:
    images, texts = aligned_pairs(150, d, noise=1.2, seed=11)
    reals = aligned_pairs(20, d, seed=12)
    calls = _with_real_batch(batches(images, texts, [40, 1, 70, 39]), *reals)
    captions, prompts = aligned_pairs(90, d, noise=0.8, seed=13)
    text_calls = batches(captions, prompts, [30, 60])
    return {
        "clip-s": MetricCase(
            partial(CLIPScore, feature=d),
            calls,
            naive_clip_score(images, texts),
            functional=partial(clip_score, images, texts),
        ),
        "clip-s-official": MetricCase(
            partial(CLIPScore, feature=d, clamp=False),
            calls,
            naive_clip_score(images, texts, clamp=False),
            functional=partial(clip_score, images, texts, clamp=False),
        ),
        "clip-s-torchmetrics-scale": MetricCase(
            partial(CLIPScore, feature=d, weight=100, keep_per_sample=False),
            calls,
            naive_clip_score(images, texts, weight=100),
            functional=partial(clip_score, images, texts, weight=100),
        ),
        "clip-s-text-text": MetricCase(
            partial(CLIPScore, feature=(d + 3, d), pairs="text-text"),
            text_calls,
            naive_clip_score(captions, prompts),
            functional=partial(clip_score, captions, prompts),
        ),
    }


def ref_clip_score_cases(d: int = 8) -> dict[str, MetricCase]:
    images, texts = aligned_pairs(120, d, noise=1.2, seed=21)
    references = references_for(texts, seed=22)
    padded, mask = pad_references(references)
    expected = naive_refclip(images, texts, references)
    return {
        "refclip-s-lists": MetricCase(
            partial(RefCLIPScore, feature=d),
            batches(images, texts, [50, 1, 69], references),
            expected,
            functional=partial(ref_clip_score, images, texts, references),
        ),
        "refclip-s-padded": MetricCase(
            partial(RefCLIPScore, feature=d),
            batches(images, texts, [60, 60], padded, mask),
            expected,
            functional=partial(ref_clip_score, images, texts, padded, reference_mask=mask),
        ),
        "refclip-s-weight-100": MetricCase(
            partial(RefCLIPScore, feature=d, weight=100.0),
            batches(images, texts, [70, 50], references),
            naive_refclip(images, texts, references, weight=100.0),
            functional=partial(ref_clip_score, images, texts, references, weight=100.0),
        ),
    }


def r_precision_cases(d: int = 8) -> dict[str, MetricCase]:
    images, texts = aligned_pairs(240, d, noise=0.9, seed=31, duplicates=6)
    reals = aligned_pairs(10, d, seed=32)
    calls = _with_real_batch(batches(images, texts, [100, 1, 139]), *reals)
    return {
        "r-precision": MetricCase(
            partial(CLIPRPrecision, feature=d),
            calls,
            naive_r_precision(images, texts),
            functional=partial(clip_r_precision, images, texts),
        ),
        "r-precision-distinct": MetricCase(
            partial(CLIPRPrecision, feature=d, negatives="distinct"),
            calls,
            naive_r_precision(images, texts, negatives="distinct"),
            functional=partial(clip_r_precision, images, texts, negatives="distinct"),
        ),
        "r-precision-9-negatives": MetricCase(
            partial(CLIPRPrecision, feature=d, num_negatives=9, max_samples=240),
            calls,
            naive_r_precision(images, texts, n=9),
            functional=partial(clip_r_precision, images, texts, num_negatives=9),
        ),
    }


#: InfoNCE's scores are float32 products with float64 sums: within 1e-6 relative of the float64 formula (its
#: documented tolerance), where the other companions agree to 1e-10.
INFONCE_REL = 1e-6


def infonce_cases(d: int = 8) -> dict[str, MetricCase]:
    images, texts = aligned_pairs(200, d, noise=0.7, seed=41)
    reals = aligned_pairs(10, d, seed=42)
    calls = _with_real_batch(batches(images, texts, [90, 1, 109]), *reals)
    return {
        "infonce": MetricCase(
            partial(InfoNCE, feature=d),
            calls,
            naive_infonce(images, texts),
            functional=partial(infonce, images, texts),
            rel=INFONCE_REL,
        ),
        "infonce-clip-temperature": MetricCase(
            partial(InfoNCE, feature=d, temperature=0.01),
            calls,
            naive_infonce(images, texts, 0.01),
            functional=partial(infonce, images, texts, 0.01),
            rel=INFONCE_REL,
        ),
    }


def all_cases() -> dict[str, MetricCase]:
    return {**clip_score_cases(), **ref_clip_score_cases(), **r_precision_cases(), **infonce_cases()}
