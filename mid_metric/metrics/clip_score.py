"""The streaming ``CLIPScore`` and ``RefCLIPScore`` metrics (Hessel et al., EMNLP 2021) for torchmetrics."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torchmetrics.utilities.data import dim_zero_sum

from mid_metric._checks import (
    check_bool,
    check_caption_list,
    check_choice,
    check_joint_embedding,
    check_nonzero_rows,
    check_pair_count,
    check_pairs,
    check_reference_captions,
    check_references,
    check_settings_state,
    check_sums_state,
    check_values_state,
    check_weight,
    same_settings,
)
from mid_metric.functional._similarity import pair_cosines
from mid_metric.functional.clip_score import ref_clip_values
from mid_metric.metrics._base import FeatureSpec
from mid_metric.metrics._companion import CompanionMetric

#: What CLIPScore's pairs are: an image and a caption, or two captions (the MID paper's "Caption" score).
PAIRS = ("image-text", "text-text")
_SLACK = 1e-9


class CLIPScore(CompanionMetric):
    r"""CLIP-S: the mean over candidate pairs of ``weight * max(cos(image, text), 0)`` (Hessel et al. 2021).

    .. math:: \mathrm{CLIP\text{-}S} = \frac1M \sum_j w \max(\cos(v_j, c_j), 0)

    Conventions (``docs/companion_metrics.md`` compares them):

    - ``weight=2.5, clamp=True`` (the defaults) is Hessel et al.'s CLIPScore, which clamps each pair;
    - ``weight=2.5, clamp=False`` is the CLIP-S of the MID paper's code (the mean raw cosine times 2.5);
    - ``weight=100`` is torchmetrics' scale; torchmetrics clamps the *mean* (``max(100 mean cos, 0)``), not each
      pair, so with ``clamp=True`` this differs from it whenever some pair has a negative cosine.

    The cosines are taken in float64 after each row is scaled to unit norm. The state is a count and two sums (the
    raw and the clamped cosines), plus each pair's cosine (8 bytes a pair) for :meth:`per_sample` unless
    ``keep_per_sample=False``; the weight and the clamp apply at ``compute()``, so instances that differ only in
    them may share a state (``MetricCollection``'s compute groups do). Batches passed with ``real=True`` are
    skipped, so that one ``MetricCollection.update`` can feed MID's reference pairs and these metrics.

    **Text-text pairs** (``pairs="text-text"``): both arguments of ``update`` are captions, e.g. a captioner's
    caption of each generated image (first argument) against the prompt it was generated from (second argument),
    which is the MID paper's "Caption" CLIP-S. Pass their text features (``(B, text_dim)`` each), or, when the
    metric holds a model, two lists of strings, both encoded with the text encoder.

    Under DDP, ``compute()`` and :meth:`per_sample` are collectives: call them on every rank.

    Args:
        feature: Feature size: an int, or ``(image_dim, text_dim)`` (equal for image-text pairs); or a feature
            extractor (a CLIP model id, a ``(CLIPModel, CLIPProcessor)`` pair, ...), and then ``update`` also takes
            raw images and captions (see :class:`~mid_metric.MutualInformationDivergence`).
        weight: The scale: 2.5 (Hessel et al., the MID paper's code) or 100 (torchmetrics).
        clamp: Clamp each pair's cosine at 0 (Hessel et al.); ``False`` averages the raw cosines (the MID paper's
            code).
        pairs: ``"image-text"`` or ``"text-text"``.
        keep_per_sample: Keep each pair's cosine for :meth:`per_sample` (8 bytes a pair); ``False`` keeps only the
            sums.
        validate_args: Check inputs for shape, dtype, NaN/Inf and zero rows.
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: If ``feature`` is none of the accepted forms, or ``clamp``/``keep_per_sample`` is not a bool.
        ValueError: If ``weight`` is not a finite number > 0, ``pairs`` is unknown, or image-text pairs have
            features of different sizes.

    Example:
        >>> import torch
        >>> from mid_metric import CLIPScore
        >>> images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
        >>> texts = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 0.0]])   # cosines 0.707, -0.707, 1
        >>> metric = CLIPScore(feature=2)
        >>> metric.update(images[:2], texts[:2])
        >>> metric.update(images[2:], texts[2:])
        >>> round(metric.compute().item(), 6)          # 2.5 * (0.707 + 0 + 1) / 3
        1.422589
        >>> [round(v, 4) for v in metric.per_sample().tolist()]
        [1.7678, 0.0, 2.5]
        >>> official = CLIPScore(feature=2, clamp=False)   # the MID paper's code's CLIP-S
        >>> official.update(images, texts)
        >>> round(official.compute().item(), 6)
        0.833333
    """

    plot_lower_bound: Optional[float] = None
    plot_upper_bound: Optional[float] = None

    settings: Tensor
    sums: Tensor
    pair_cosines: list[Tensor]

    def __init__(
        self,
        feature: FeatureSpec = 768,
        weight: float = 2.5,
        clamp: bool = True,
        pairs: str = "image-text",
        keep_per_sample: bool = True,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(feature, validate_args, **kwargs)
        self.weight = check_weight(weight)
        self.clamp = check_bool(clamp, "clamp")
        self.pairs = check_choice(pairs, "pairs", PAIRS)
        self.keep_per_sample = check_bool(keep_per_sample, "keep_per_sample")
        if self.pairs == "image-text":
            check_joint_embedding(self.image_dim, self.text_dim, "CLIPScore")
        # The kind of pairs the sums are of: states of image-text and text-text pairs are never combined.
        self._settings = torch.tensor([float(PAIRS.index(self.pairs))], dtype=torch.float64)
        self.add_checked_state("settings", self._settings.clone(), same_settings, self._check_settings)
        # [count, sum of cosines, sum of cosines clamped at 0]
        self.add_checked_state("sums", torch.zeros(3, dtype=torch.float64), dim_zero_sum, self._check_sums)
        if self.keep_per_sample:
            self.add_checked_list_state("pair_cosines", (), torch.float64, self._check_cosines)

    # ----------------------------------------------------------------------------------- state checks
    def _check_settings(self, value: object, name: str) -> Tensor:
        expected = self._settings.to(self.device)
        return check_settings_state(value, name, expected, "the kind of pairs (0: image-text, 1: text-text)")

    def _check_sums(self, value: object, name: str) -> Tensor:
        sums = check_sums_state(value, name, 3, 1.0)
        if float(sums[2]) < max(float(sums[1]), 0.0) - _SLACK * max(1.0, float(sums[0])):
            raise ValueError(f"`{name}` has a clamped sum below the raw sum or below 0; it is not a valid state.")
        return sums.to(device=self.device, dtype=torch.float64, copy=True)

    def _check_cosines(self, value: object, name: str) -> list[Tensor]:
        parts = check_values_state(value, name, -1.0, 1.0)
        return [part.to(device=self.device, dtype=torch.float64, copy=True) for part in parts]

    def _check_consistency(self, checked: dict[str, Any], where: str) -> None:
        if self.keep_per_sample and "pair_cosines" in checked and "sums" in checked:
            kept = sum(int(part.shape[0]) for part in checked["pair_cosines"])
            if kept != int(checked["sums"][0]):
                raise ValueError(
                    f"`{where}pair_cosines` holds {kept} values but `{where}sums` counts {int(checked['sums'][0])}"
                    " pairs; they do not come from one metric."
                )

    # ------------------------------------------------------------------------------------------ update
    def _feature_pairs(self, images: Any, texts: Any) -> tuple[Tensor, Tensor]:
        if self.pairs == "image-text":
            return self._stored_features(images, texts)
        self._check_device()
        if self.feature_extractor is not None and not (isinstance(images, Tensor) and isinstance(texts, Tensor)):
            images, texts = self._encode_caption_pairs(images, texts)
        if self.validate_args:
            images, texts = check_pairs(images, texts, self.text_dim, self.text_dim)
            check_nonzero_rows(images, "images")
            check_nonzero_rows(texts, "texts")
        return images.to(self.device), texts.to(self.device)

    def _encode_caption_pairs(self, images: Any, texts: Any) -> tuple[Tensor, Tensor]:
        """Encode two lists of captions (``pairs="text-text"`` in model mode) with the text encoder."""
        first = check_caption_list(images, "images")
        second = check_caption_list(texts, "texts", expected=len(first))
        if not first:
            return torch.empty(0, self.text_dim), torch.empty(0, self.text_dim)
        extractor = self.feature_extractor
        return extractor.encode_texts(first), extractor.encode_texts(second)  # type: ignore[union-attr]

    def update(self, images: Any, texts: Any, real: bool = False) -> None:
        """Add a batch of candidate pairs; a batch with ``real=True`` (reference pairs) is skipped.

        Args:
            images: Image features ``(B, image_dim)``, or raw images when the metric holds a model. With
                ``pairs="text-text"``: the first captions' text features ``(B, text_dim)``, or a list of ``B``
                captions.
            texts: Text features ``(B, text_dim)`` paired row by row with ``images``, or a list of ``B`` captions.
            real: ``True`` skips the batch; nothing is encoded or checked.

        Raises:
            TypeError: If ``real`` is not a bool or the inputs have the wrong type.
            ValueError: If a shape is wrong, the batch sizes differ, or a row is zero, NaN or Inf.
        """
        if self._is_skipped(real):
            return
        first, second = self._feature_pairs(images, texts)
        if first.shape[0] == 0:
            return
        cosines = pair_cosines(first, second)
        count = torch.tensor(float(cosines.shape[0]), dtype=torch.float64, device=cosines.device)
        self.sums = self.sums + torch.stack([count, cosines.sum(), cosines.clamp(min=0.0).sum()])
        if self.keep_per_sample:
            self.pair_cosines.append(cosines)

    def _encode_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if self.pairs == "image-text":
            return super()._encode_arguments(arguments)
        images, texts = arguments["images"], arguments["texts"]
        if self.feature_extractor is not None and not (isinstance(images, Tensor) and isinstance(texts, Tensor)):
            arguments["images"], arguments["texts"] = self._encode_caption_pairs(images, texts)
        return arguments

    def _sync_settings(self) -> dict[str, object]:
        settings = {"weight": self.weight, "clamp": self.clamp, "pairs": self.pairs}
        return {**super()._sync_settings(), **settings, "keep_per_sample": self.keep_per_sample}

    # ----------------------------------------------------------------------------------------- compute
    def compute(self) -> Tensor:
        """Return CLIP-S over all candidate pairs (of every rank under DDP), a 0-dim float64 tensor.

        Raises:
            ValueError: If there are no candidate pairs.
        """
        count = float(self.sums[0])
        check_pair_count(int(count), 1, "CLIPScore")
        if self.keep_per_sample:
            cosines = self._cat_list_state("pair_cosines")
            self._last_per_sample = self.weight * (cosines.clamp(min=0.0) if self.clamp else cosines)
        return self.weight * (self.sums[2 if self.clamp else 1] / count)  # the mean first: weight * sum may overflow

    def per_sample(self) -> Tensor:
        """Return each pair's CLIP-S, ``weight * max(cos, 0)`` (or ``weight * cos`` without clamp), float64 ``(M,)``.

        In the order the pairs were passed; under DDP a collective whose result is rank-major (see
        :meth:`CompanionMetric.per_sample <mid_metric.metrics._companion.CompanionMetric.per_sample>`).

        Raises:
            ValueError: If the metric was built with ``keep_per_sample=False``, or as :meth:`compute`.
        """
        if not self.keep_per_sample:
            raise ValueError(
                "This CLIPScore was built with `keep_per_sample=False`, so it keeps only sums; build it with"
                " keep_per_sample=True (8 bytes a pair) for per-pair values."
            )
        return super().per_sample()


class RefCLIPScore(CompanionMetric):
    r"""RefCLIP-S: the harmonic mean of CLIP-S and the candidate caption's best similarity to a reference caption.

    Per candidate pair (an image and its generated caption) with reference captions ``r_1..r_R``:

    .. math:: \mathrm{RefCLIP\text{-}S} = \frac{2 a b}{a + b},\quad a = w \max(\cos(v, c), 0),
        \quad b = \max(\max_r \cos(c, r), 0)

    (0 when ``a + b = 0``), averaged over the pairs (Hessel et al. 2021). Their code leaves ``b`` unclamped; the
    clamp differs from it only when every reference is more than 90 degrees from the caption. The state is a count
    and a sum, plus each pair's score (8 bytes a pair) for :meth:`per_sample` unless ``keep_per_sample=False``;
    the weight is recorded with the state, so states of different weights are never combined. Batches passed with
    ``real=True`` are skipped (see :class:`CLIPScore`). Under DDP, ``compute()`` and :meth:`per_sample` are
    collectives.

    Args:
        feature: Feature size (an int, or equal ``(image_dim, text_dim)``) or a feature extractor; then ``update``
            also takes raw images, captions and lists of reference captions.
        weight: CLIP-S's weight: 2.5 in Hessel et al.
        keep_per_sample: Keep each pair's score for :meth:`per_sample`.
        validate_args: Check inputs for shape, dtype, NaN/Inf and zero rows.
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: If ``feature`` is none of the accepted forms, or ``keep_per_sample`` is not a bool.
        ValueError: If ``weight`` is not a finite number > 0, or the image and text features differ in size.

    Example:
        >>> import torch
        >>> from mid_metric import RefCLIPScore
        >>> images, texts = torch.eye(2), torch.eye(2)     # each caption matches its image: a = 2.5
        >>> references = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0]])]
        >>> metric = RefCLIPScore(feature=2)
        >>> metric.update(images, texts, references)      # b = 1, then b = 0.707
        >>> [round(v, 4) for v in metric.per_sample().tolist()]
        [1.4286, 1.1024]
        >>> padded = torch.stack([references[0], torch.cat([references[1], torch.zeros(1, 2)])])
        >>> mask = torch.tensor([[True, True], [True, False]])   # the same references as a (B, R, D) tensor
        >>> other = RefCLIPScore(feature=2)
        >>> other.update(images, texts, padded, mask)
        >>> torch.allclose(other.compute(), metric.compute())
        True
    """

    plot_lower_bound: Optional[float] = 0.0
    plot_upper_bound: Optional[float] = None

    settings: Tensor
    sums: Tensor
    pair_scores: list[Tensor]

    def __init__(
        self,
        feature: FeatureSpec = 768,
        weight: float = 2.5,
        keep_per_sample: bool = True,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(feature, validate_args, **kwargs)
        self.weight = check_weight(weight)
        self.keep_per_sample = check_bool(keep_per_sample, "keep_per_sample")
        check_joint_embedding(self.image_dim, self.text_dim, "RefCLIPScore")
        self._settings = torch.tensor([self.weight], dtype=torch.float64)
        self.add_checked_state("settings", self._settings.clone(), same_settings, self._check_settings)
        # [count, sum of RefCLIP-S]
        self.add_checked_state("sums", torch.zeros(2, dtype=torch.float64), dim_zero_sum, self._check_sums)
        if self.keep_per_sample:
            self.add_checked_list_state("pair_scores", (), torch.float64, self._check_scores)

    @property
    def _score_bound(self) -> float:
        return max(self.weight, 1.0)  # the harmonic mean is at most max(a, b) <= max(weight, 1)

    # ----------------------------------------------------------------------------------- state checks
    def _check_settings(self, value: object, name: str) -> Tensor:
        return check_settings_state(value, name, self._settings.to(self.device), "weight")

    def _check_sums(self, value: object, name: str) -> Tensor:
        sums = check_sums_state(value, name, 2, self._score_bound)
        if float(sums[1]) < -_SLACK * max(1.0, float(sums[0])):
            raise ValueError(f"`{name}` has a negative sum of scores; it is not a valid state.")
        return sums.to(device=self.device, dtype=torch.float64, copy=True)

    def _check_scores(self, value: object, name: str) -> list[Tensor]:
        parts = check_values_state(value, name, 0.0, self._score_bound)
        return [part.to(device=self.device, dtype=torch.float64, copy=True) for part in parts]

    def _check_consistency(self, checked: dict[str, Any], where: str) -> None:
        if self.keep_per_sample and "pair_scores" in checked and "sums" in checked:
            kept = sum(int(part.shape[0]) for part in checked["pair_scores"])
            if kept != int(checked["sums"][0]):
                raise ValueError(
                    f"`{where}pair_scores` holds {kept} values but `{where}sums` counts {int(checked['sums'][0])}"
                    " pairs; they do not come from one metric."
                )

    # ------------------------------------------------------------------------------------------ update
    def _is_caption_lists(self, references: object) -> bool:
        return (
            self.feature_extractor is not None
            and isinstance(references, (list, tuple))
            and len(references) > 0
            and not isinstance(references[0], Tensor)
        )

    def _encode_references(self, references: Any, count: int) -> list[Tensor]:
        """Encode lists of reference captions (model mode) into a list of ``(R_i, text_dim)`` tensors."""
        captions = check_reference_captions(references, count)
        flat = self.feature_extractor.encode_texts([text for group in captions for text in group])  # type: ignore
        return list(torch.split(flat, [len(group) for group in captions]))

    def _reference_features(self, references: Any, reference_mask: Any, count: int) -> tuple[Tensor, Tensor]:
        if references is None:
            raise TypeError(
                "`references` is required for candidate pairs: a list of B tensors (R_i, D), a (B, R, D) tensor"
                " with `reference_mask`, or (with a model) a list of B lists of reference captions."
            )
        if self._is_caption_lists(references):
            if reference_mask is not None:
                raise ValueError("`reference_mask` is for a (B, R, D) tensor of references, not lists of captions.")
            references = self._encode_references(references, count)
        flat, owners = check_references(references, count, self.text_dim, reference_mask, self.validate_args)
        if self.validate_args:
            check_nonzero_rows(flat, "references")
        return flat.to(self.device), owners.to(self.device)

    def update(
        self,
        images: Any,
        texts: Any,
        references: Any = None,
        reference_mask: Optional[Tensor] = None,
        real: bool = False,
    ) -> None:
        """Add a batch of candidate pairs with their reference captions; ``real=True`` batches are skipped.

        Args:
            images: Image features ``(B, D)``, or raw images when the metric holds a model.
            texts: Candidate caption features ``(B, D)``, or a list of ``B`` captions when the metric holds a model.
            references: Each pair's reference captions: a list of ``B`` tensors ``(R_i, D)``; or a tensor
                ``(B, R, D)`` with ``reference_mask``; or, when the metric holds a model, a list of ``B`` lists of
                strings. Required unless ``real=True``.
            reference_mask: For a ``(B, R, D)`` tensor, a bool tensor ``(B, R)`` marking the real references among
                padding; ``None`` means all ``R`` are real.
            real: ``True`` skips the batch (MID's reference pairs in a shared ``MetricCollection.update``).

        Raises:
            TypeError: If ``real`` is not a bool, ``references`` is missing, or an input has the wrong type.
            ValueError: If a shape is wrong, a pair has no reference, or a row is zero, NaN or Inf.
        """
        if self._is_skipped(real):
            return
        images, texts = self._stored_features(images, texts)
        count = images.shape[0]
        flat, owners = self._reference_features(references, reference_mask, count)
        if count == 0:
            return
        values = ref_clip_values(images, texts, flat, owners, self.weight)
        size = torch.tensor(float(count), dtype=torch.float64, device=values.device)
        self.sums = self.sums + torch.stack([size, values.sum()])
        if self.keep_per_sample:
            self.pair_scores.append(values)

    def _encode_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        arguments = super()._encode_arguments(arguments)
        references = arguments.get("references")
        if self._is_caption_lists(references):
            arguments["references"] = self._encode_references(references, len(references))
        return arguments

    def _sync_settings(self) -> dict[str, object]:
        return {**super()._sync_settings(), "weight": self.weight, "keep_per_sample": self.keep_per_sample}

    # ----------------------------------------------------------------------------------------- compute
    def compute(self) -> Tensor:
        """Return RefCLIP-S over all candidate pairs (of every rank under DDP), a 0-dim float64 tensor.

        Raises:
            ValueError: If there are no candidate pairs.
        """
        count = float(self.sums[0])
        check_pair_count(int(count), 1, "RefCLIPScore")
        if self.keep_per_sample:
            self._last_per_sample = self._cat_list_state("pair_scores")
        return self.sums[1] / count

    def per_sample(self) -> Tensor:
        """Return each pair's RefCLIP-S, float64 ``(M,)``, in the order the pairs were passed (rank-major under DDP).

        Raises:
            ValueError: If the metric was built with ``keep_per_sample=False``, or as :meth:`compute`.
        """
        if not self.keep_per_sample:
            raise ValueError(
                "This RefCLIPScore was built with `keep_per_sample=False`, so it keeps only sums; build it with"
                " keep_per_sample=True (8 bytes a pair) for per-pair values."
            )
        return super().per_sample()
