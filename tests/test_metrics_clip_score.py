"""``CLIPScore`` and ``RefCLIPScore`` (the torchmetrics classes) against the formulas, in every way a user runs them."""

from __future__ import annotations

import pickle

import pytest
import torch
from _state import assert_same_state_dict, snapshot_state_dict
from _tester import check_all_in_process
from companion_refs import (
    OfficialClipScoreTwin,
    aligned_pairs,
    clip_score_cases,
    naive_clip_per_pair,
    naive_refclip_per_pair,
    pad_references,
    ref_clip_score_cases,
    references_for,
)
from torchmetrics import MetricCollection

from mid_metric import CLIPScore, MutualInformationDivergence, RefCLIPScore
from mid_metric.features import CallableFeatureExtractor

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")

CASES = {**clip_score_cases(), **ref_clip_score_cases()}
D = 8


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_in_process_check(name):
    check_all_in_process(CASES[name])


@pytest.fixture(scope="module")
def pairs():
    return aligned_pairs(130, D, noise=1.2, seed=7)


def _fed(metric, images, texts, sizes, *extra):
    start = 0
    for size in sizes:
        stop = start + size
        metric.update(images[start:stop], texts[start:stop], *(e[start:stop] for e in extra))
        start = stop
    return metric


# ------------------------------------------------------------------------------------------- per_sample
@pytest.mark.parametrize("clamp", [True, False])
def test_per_sample_is_each_pair_in_the_order_passed(pairs, clamp):
    images, texts = pairs
    metric = _fed(CLIPScore(feature=D, clamp=clamp), images, texts, [50, 80])
    values = metric.per_sample()
    assert values.dtype == torch.float64 and values.shape == (130,)
    torch.testing.assert_close(values, naive_clip_per_pair(images, texts, clamp=clamp), rtol=1e-12, atol=1e-14)
    assert float(values.mean()) == pytest.approx(float(metric.compute()), rel=1e-12)
    # Calls in the other order: the values come in that order.
    swapped = CLIPScore(feature=D, clamp=clamp)
    swapped.update(images[50:], texts[50:])
    swapped.update(images[:50], texts[:50])
    torch.testing.assert_close(swapped.per_sample(), torch.cat([values[50:], values[:50]]), rtol=1e-12, atol=0)


def test_per_sample_after_merge_puts_own_pairs_first(pairs):
    images, texts = pairs
    first, second = CLIPScore(feature=D), CLIPScore(feature=D)
    first.update(images[:40], texts[:40])
    second.update(images[40:], texts[40:])
    first.merge_state(second)
    torch.testing.assert_close(first.per_sample(), naive_clip_per_pair(images, texts), rtol=1e-12, atol=1e-14)


def test_per_sample_of_ref_clip_score(pairs):
    images, texts = pairs
    references = references_for(texts, seed=8)
    metric = _fed(RefCLIPScore(feature=D), images, texts, [60, 1, 69], references)
    expected = naive_refclip_per_pair(images, texts, references)
    torch.testing.assert_close(metric.per_sample(), expected, rtol=1e-12, atol=1e-14)
    padded, mask = pad_references(references)
    other = _fed(RefCLIPScore(feature=D), images, texts, [130], padded, mask)
    torch.testing.assert_close(other.per_sample(), expected, rtol=1e-12, atol=1e-14)


def test_without_per_sample_values_the_state_is_sums_only(pairs):
    images, texts = pairs
    metric = _fed(CLIPScore(feature=D, keep_per_sample=False), images, texts, [130])
    assert set(metric.metric_state) == {"state_format", "settings", "sums"}
    assert float(metric.compute()) == pytest.approx(float(naive_clip_per_pair(images, texts).mean()), rel=1e-12)
    with pytest.raises(ValueError, match="keep_per_sample=False"):
        metric.per_sample()
    refclip = RefCLIPScore(feature=D, keep_per_sample=False)
    refclip.update(images, texts, references_for(texts))
    with pytest.raises(ValueError, match="keep_per_sample=False"):
        refclip.per_sample()


# -------------------------------------------------------------------------------------------- official
def test_clamp_false_agrees_with_the_official_code_on_clip_like_features():
    images, texts = aligned_pairs(2000, 64, noise=2.0, seed=9)
    twin, ours = OfficialClipScoreTwin(), CLIPScore(feature=64, clamp=False)
    for start in range(0, 2000, 256):
        stop = start + 256
        twin.update(images[start:stop], texts[start:stop], images[start:stop])
        ours.update(images[start:stop], texts[start:stop])
    assert float(ours.compute()) == pytest.approx(float(twin.compute()), rel=2e-6)
    torch.testing.assert_close(ours.per_sample(), twin.compute(reduction=False).double(), rtol=2e-6, atol=2e-7)


# --------------------------------------------------------------------------------------- state meaning
def test_weight_and_clamp_apply_at_compute_so_such_states_combine(pairs):
    images, texts = pairs
    hessel = _fed(CLIPScore(feature=D), images, texts, [60])
    torchmetrics_scale = _fed(CLIPScore(feature=D, weight=100, clamp=False), images[60:], texts[60:], [70])
    hessel.merge_state(torchmetrics_scale)
    assert float(hessel.compute()) == pytest.approx(float(naive_clip_per_pair(images, texts).mean()), rel=1e-12)


@pytest.mark.parametrize(
    "make_other, match",
    [
        (lambda: CLIPScore(feature=D, pairs="text-text"), "kind of pairs"),
        (lambda: CLIPScore(feature=D + 1, pairs="text-text"), r"state format 1 with \(image_dim, text_dim\)"),
    ],
)
def test_states_of_another_meaning_are_refused(pairs, make_other, match):
    images, texts = pairs
    metric = _fed(CLIPScore(feature=D), images, texts, [130])
    other = make_other()
    before = snapshot_state_dict(metric)
    with pytest.raises(ValueError, match=match):
        metric.merge_state(other)
    with pytest.raises(ValueError, match=match):
        metric.load_state_dict(other.state_dict())
    assert_same_state_dict(metric, before)


def test_ref_clip_scores_of_other_weights_never_combine(pairs):
    images, texts = pairs
    references = references_for(texts)
    metric = _fed(RefCLIPScore(feature=D), images, texts, [130], references)
    other = _fed(RefCLIPScore(feature=D, weight=100.0), images, texts, [130], references)
    before = snapshot_state_dict(metric)
    with pytest.raises(ValueError, match=r"`incoming settings` records weight \[100.0\]"):
        metric.merge_state(other)
    assert_same_state_dict(metric, before)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda s: {**s, "sums": s["sums"] * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)}, "clamped sum"),
        (lambda s: {**s, "sums": s["sums"] + torch.tensor([0.5, 0, 0], dtype=torch.float64)}, "whole number"),
        (lambda s: {**s, "sums": s["sums"] * torch.tensor([1.0, 9.0, 1.0], dtype=torch.float64)}, "above the bound"),
        (lambda s: {**s, "pair_cosines": s["pair_cosines"][:-1]}, "holds 30 values but `(incoming )?sums` counts 80"),
        (lambda s: {**s, "pair_cosines": [t * 3 for t in s["pair_cosines"]]}, r"outside \[-1, 1\]"),
        (lambda s: {**s, "pair_cosines": torch.zeros(2, 3)}, "1 dimension"),
        (lambda s: {k: v for k, v in s.items() if k != "sums"}, "lacks the state"),
    ],
)
def test_an_invalid_incoming_state_changes_nothing(pairs, corrupt, match):
    images, texts = pairs
    metric = _fed(CLIPScore(feature=D), images, texts, [50])
    other = _fed(CLIPScore(feature=D), images, texts, [30, 50])
    incoming = corrupt(dict(other.metric_state))
    before, value = snapshot_state_dict(metric), metric.compute()
    with pytest.raises(ValueError, match=match):
        metric.merge_state(incoming)
    if "sums" in incoming:
        with pytest.raises((ValueError, RuntimeError), match=match):
            metric.load_state_dict(incoming)
    assert_same_state_dict(metric, before)
    assert torch.equal(metric.compute(), value)


def test_load_state_dict_without_strict_reports_missing_states(pairs):
    images, texts = pairs
    metric = _fed(CLIPScore(feature=D), images, texts, [50])
    before = snapshot_state_dict(metric)
    saved = {k: v for k, v in _fed(CLIPScore(feature=D), images, texts, [9]).state_dict().items() if k != "sums"}
    result = metric.load_state_dict(saved, strict=False)
    assert result.missing_keys == ["sums"]
    assert_same_state_dict(metric, before)


# -------------------------------------------------------------------------------------------- bad input
BAD_UPDATES = [
    pytest.param(lambda m, x, y: m.update(x, y[:-1]), ValueError, "same number of pairs", id="sizes"),
    pytest.param(lambda m, x, y: m.update(x, torch.ones(len(x), D + 1)), ValueError, "`texts` must have", id="dim"),
    pytest.param(lambda m, x, y: m.update(x.long(), y), TypeError, "`images` must be a floating", id="int"),
    pytest.param(
        lambda m, x, y: m.update(x, y.index_fill(0, torch.tensor([3]), float("inf"))),
        ValueError,
        "`texts` contains NaN or Inf",
        id="inf",
    ),
    pytest.param(lambda m, x, y: m.update(x * 0, y), ValueError, "`images` has 10 row", id="zero-rows"),
    pytest.param(lambda m, x, y: m.update(x, y, real=1), TypeError, "`real` must be a bool", id="real"),
    pytest.param(lambda m, x, y: m(x, y[:-1]), ValueError, "same number of pairs", id="forward"),
]


@pytest.mark.parametrize("call, error, match", BAD_UPDATES)
def test_bad_input_to_clip_score_changes_nothing(pairs, call, error, match):
    images, texts = pairs
    metric = _fed(CLIPScore(feature=D), images, texts, [40])
    before = snapshot_state_dict(metric)
    with pytest.raises(error, match=match):
        call(metric, images[:10], texts[:10])
    assert_same_state_dict(metric, before)


@pytest.mark.parametrize(
    "references, mask, error, match",
    [
        pytest.param(None, None, TypeError, "`references` is required", id="missing"),
        pytest.param("refs", None, TypeError, "`references` must be a list", id="type"),
        pytest.param([torch.ones(1, D)] * 9, None, ValueError, "one entry per pair", id="count"),
        pytest.param(
            [torch.ones(1, D)] * 9 + [torch.ones(0, D)], None, ValueError, r"`references\[9\]` holds no", id="empty"
        ),
        pytest.param(torch.ones(10, 2, D), torch.ones(10, 2), TypeError, "`reference_mask` must be a bool", id="mask"),
        pytest.param(
            torch.ones(10, 2, D), torch.zeros(10, 2, dtype=torch.bool), ValueError, "leaves 10 pair", id="mask-empty"
        ),
        pytest.param(
            [torch.full((1, D), float("nan"))] * 10, None, ValueError, r"`references\[0\]` contains NaN", id="nan"
        ),
    ],
)
def test_bad_references_change_nothing(pairs, references, mask, error, match):
    images, texts = pairs
    metric = _fed(RefCLIPScore(feature=D), images, texts, [40], references_for(texts[:40]))
    before = snapshot_state_dict(metric)
    with pytest.raises(error, match=match):
        metric.update(images[:10], texts[:10], references, mask)
    assert_same_state_dict(metric, before)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: CLIPScore(feature=(4, 6)), ValueError, "one embedding space"),
        (lambda: CLIPScore(feature=4, weight=-1), ValueError, "`weight`"),
        (lambda: CLIPScore(feature=4, clamp="yes"), TypeError, "`clamp` must be a bool"),
        (lambda: CLIPScore(feature=4, pairs="image-image"), ValueError, "`pairs` must be one of"),
        (lambda: CLIPScore(feature=4, keep_per_sample=None), TypeError, "`keep_per_sample`"),
        (lambda: RefCLIPScore(feature=(4, 6)), ValueError, "one embedding space"),
        (lambda: RefCLIPScore(feature=4, weight=float("inf")), ValueError, "`weight`"),
    ],
)
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_compute_without_pairs_raises_and_real_batches_are_skipped(pairs):
    images, texts = pairs
    metric = CLIPScore(feature=D)
    metric.update(images, texts, real=True)
    assert float(metric.sums[0]) == 0
    with pytest.raises(ValueError, match="CLIPScore needs at least 1 candidate pair"):
        metric.compute()
    refclip = RefCLIPScore(feature=D)
    refclip.update(images, texts, real=True)  # no references needed for a skipped batch
    with pytest.raises(ValueError, match="RefCLIPScore needs at least 1"):
        refclip.compute()


# ------------------------------------------------------------------------------------------ torchmetrics
def test_forward_returns_the_batch_value_and_accumulates(pairs):
    images, texts = pairs
    metric = CLIPScore(feature=D)
    batch = metric(images[:30], texts[:30])
    assert float(batch) == pytest.approx(float(naive_clip_per_pair(images[:30], texts[:30]).mean()), rel=1e-12)
    assert metric(images[:5], texts[:5], real=True) is None
    metric(images[30:], texts[30:])
    assert float(metric.compute()) == pytest.approx(float(naive_clip_per_pair(images, texts).mean()), rel=1e-12)
    refclip = RefCLIPScore(feature=D)
    references = references_for(texts)
    value = refclip(images[:20], texts[:20], references=references[:20])
    expected = naive_refclip_per_pair(images[:20], texts[:20], references[:20]).mean()
    assert float(value) == pytest.approx(float(expected), rel=1e-12)


def test_to_a_dtype_keeps_the_float64_states(pairs):
    images, texts = pairs
    metric = _fed(CLIPScore(feature=D), images, texts, [130])
    value = metric.compute()
    metric.to(torch.float16)
    assert metric.sums.dtype == torch.float64 and metric.pair_cosines[0].dtype == torch.float64
    metric.update(images[:1], texts[:1])
    assert metric.pair_cosines[-1].dtype == torch.float64
    metric.reset()
    metric.update(images, texts)
    assert torch.equal(metric.compute(), value)


def test_reset_forgets_every_pair(pairs):
    images, texts = pairs
    metric = _fed(CLIPScore(feature=D), images, texts, [130])
    metric.per_sample()
    metric.reset()
    assert metric.pair_cosines == [] and float(metric.sums.abs().sum()) == 0
    metric.update(images[:3], texts[:3])
    assert metric.per_sample().shape == (3,)


def test_pickle_keeps_the_settings(pairs):
    images, texts = pairs
    metric = _fed(CLIPScore(feature=D, weight=100, clamp=False, pairs="text-text"), images, texts, [130])
    copy = pickle.loads(pickle.dumps(metric))
    assert (copy.weight, copy.clamp, copy.pairs) == (100.0, False, "text-text")
    assert torch.equal(copy.compute(), metric.compute())


# ------------------------------------------------------------------------------------------ model mode
class Encoders:
    """Toy encoders with call counters: images (B, 3, H, W) -> means of channels, captions -> letter counts."""

    def __init__(self):
        self.image_calls = self.text_calls = 0
        self.weight = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))

    def images(self, batch):
        self.image_calls += 1
        return batch.float().mean(dim=(2, 3)) @ self.weight

    def texts(self, captions):
        self.text_calls += 1
        return torch.tensor([[len(t), t.count("a") + 1.0, t.count("o") - 1.0, 2.0] for t in captions])


@pytest.fixture
def model():
    encoders = Encoders()
    extractor = CallableFeatureExtractor(encoders.images, encoders.texts, name="toy", image_dim=4, text_dim=4)
    return encoders, extractor


IMAGES = torch.randint(0, 255, (3, 3, 8, 8), dtype=torch.uint8)
CAPTIONS = ["a dog", "two cats on a sofa", "a boat at sea"]


def test_model_mode_encodes_raw_inputs(model):
    encoders, extractor = model
    metric = CLIPScore(feature=extractor)
    metric.update(IMAGES, CAPTIONS)
    x, y = extractor.encode_images(IMAGES), extractor.encode_texts(CAPTIONS)
    torch.testing.assert_close(metric.per_sample(), naive_clip_per_pair(x, y), rtol=1e-6, atol=1e-7)
    encoders.image_calls = encoders.text_calls = 0
    metric(IMAGES, CAPTIONS)  # forward encodes once
    assert (encoders.image_calls, encoders.text_calls) == (1, 1)
    metric(IMAGES, CAPTIONS, real=True)  # skipped: nothing is encoded
    assert (encoders.image_calls, encoders.text_calls) == (1, 1)


def test_text_text_pairs_in_model_mode(model):
    _, extractor = model
    metric = CLIPScore(feature=extractor, pairs="text-text")
    generated = ["a dog running", "cats", "a boat"]
    metric.update(generated, CAPTIONS)
    expected = naive_clip_per_pair(extractor.encode_texts(generated), extractor.encode_texts(CAPTIONS))
    torch.testing.assert_close(metric.per_sample(), expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="`images` must be a list of strings"):
        metric.update([1, 2, 3], CAPTIONS)
    with pytest.raises(ValueError, match="`texts` must hold 2 captions"):
        metric.update(generated[:2], CAPTIONS)


def test_ref_clip_score_takes_reference_captions_in_model_mode(model):
    encoders, extractor = model
    metric = RefCLIPScore(feature=extractor)
    references = [["a dog", "a puppy"], ["cats"], ["a ship", "a boat", "sea"]]
    metric.update(IMAGES, CAPTIONS, references)
    x, y = extractor.encode_images(IMAGES), extractor.encode_texts(CAPTIONS)
    refs = [extractor.encode_texts(group) for group in references]
    torch.testing.assert_close(metric.per_sample(), naive_refclip_per_pair(x, y, refs), rtol=1e-6, atol=1e-7)
    encoders.text_calls = 0
    metric(IMAGES, CAPTIONS, references)
    assert encoders.text_calls == 2  # the captions once, the references once
    with pytest.raises(ValueError, match=r"`references\[1\]` holds no reference caption"):
        metric.update(IMAGES, CAPTIONS, [["a"], [], ["b"]])


# ---------------------------------------------------------------------------------------- collections
def test_one_collection_update_feeds_mid_and_the_clip_scores(pairs):
    images, texts = pairs
    reference = aligned_pairs(400, D, noise=0.5, seed=10)
    collection = MetricCollection(
        {
            "mid": MutualInformationDivergence(feature=D),
            "clip_s": CLIPScore(feature=D),
            "clip_s_official": CLIPScore(feature=D, clamp=False),
            "clip_s_torchmetrics": CLIPScore(feature=D, weight=100),
            "caption_clip_s": CLIPScore(feature=D, pairs="text-text"),
        }
    )
    collection.update(*reference, real=True)  # MID's reference; the CLIP-S metrics skip it
    collection.update(images, texts, real=False)
    values = collection.compute()
    assert float(values["clip_s"]) == pytest.approx(float(naive_clip_per_pair(images, texts).mean()), rel=1e-12)
    official = naive_clip_per_pair(images, texts, clamp=False).mean()
    assert float(values["clip_s_official"]) == pytest.approx(float(official), rel=1e-12)
    assert float(values["clip_s_torchmetrics"]) == pytest.approx(40 * float(values["clip_s"]), rel=1e-12)
    assert float(values["caption_clip_s"]) == pytest.approx(float(values["clip_s"]), rel=1e-12)
    alone = MutualInformationDivergence(feature=D)
    alone.update(*reference, real=True)
    alone.update(images, texts, real=False)
    assert float(values["mid"]) == pytest.approx(float(alone.compute()), rel=1e-12)
