"""CLIP features through transformers, with a tiny random CLIP saved to disk and loaded by path (offline)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / huggingface_hub are imported by this module

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from clip_fixtures import TINY_CONTEXT_LENGTH, TINY_PROJECTION_DIM, build_tiny_clip
from PIL import Image
from reference_impl import ref_mid

from mid_metric import MutualInformationDivergence
from mid_metric.features import (
    CallableFeatureExtractor,
    ClipFeatureExtractor,
    FeatureExtractor,
    as_feature_extractor,
    load_clip,
    model_identity,
    same_model,
)
from mid_metric.functional import mutual_information_divergence, pointwise_mutual_information

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

EPS = 1e-3  # the tiny random model's features are close to degenerate; regularise both sides alike
LONG_CAPTION = "a very long caption that does not fit into the sixteen token window of the tiny model"


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def hf(clip_dir):
    """The model and processor loaded independently, straight from transformers."""
    model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    processor = transformers.CLIPProcessor.from_pretrained(clip_dir)
    return model, processor


@pytest.fixture(scope="session")
def metric_factory(clip_dir):
    def make(**kwargs):
        return MutualInformationDivergence(feature=str(clip_dir), **kwargs)

    return make


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (48, 3, 40, 36), generator=gen, dtype=torch.uint8)
    words = ["cat", "dog", "red", "car", "sky", "sea", "tree", "boat"]
    captions = [f"{words[i % 8]} {words[(i * 3) % 8]} {i}" for i in range(48)]
    return images, captions


def pooled(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def reference_image_features(hf, images):
    """Independent path: PIL images through the processor's default (uint8) route, then the model."""
    model, processor = hf
    pil = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    pixels = processor(images=pil, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = pooled(model.get_image_features(pixel_values=pixels)).double()
    return features / features.norm(dim=1, keepdim=True)


def reference_text_features(hf, token_lists):
    """Independent path: encode each token-id list on its own (no padding, no truncation) with the model."""
    model, _ = hf
    rows = []
    with torch.no_grad():
        for ids in token_lists:
            rows.append(pooled(model.get_text_features(input_ids=torch.tensor([ids]))).double()[0])
    features = torch.stack(rows)
    return features / features.norm(dim=1, keepdim=True)


def token_ids(hf, caption):
    return hf[1].tokenizer(caption)["input_ids"]  # the tokenizer of the fixture never truncates by itself


def expected_identity(folder, files=("model.safetensors",)):
    """Derived independently: config.json's model_type, and sha256 of the weights files read back to back."""
    folder = Path(folder)
    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    digest = hashlib.sha256(b"".join((folder / name).read_bytes() for name in files)).hexdigest()
    return f"local:{model_type}@sha256:{digest[:16]}"


# ------------------------------------------------------------------------------------------------ features
def test_loaded_extractor_properties(clip_dir):
    extractor = load_clip(str(clip_dir))
    assert isinstance(extractor, ClipFeatureExtractor) and isinstance(extractor, FeatureExtractor)
    assert (extractor.image_dim, extractor.text_dim) == (TINY_PROJECTION_DIM, TINY_PROJECTION_DIM)
    assert extractor.name == expected_identity(clip_dir)  # what the folder holds, not where it is
    assert extractor.max_text_length == TINY_CONTEXT_LENGTH
    assert all(not p.requires_grad for p in extractor.parameters())
    assert not extractor.model.training
    extractor.train()
    assert not extractor.model.training and not extractor.training
    assert load_clip(str(clip_dir), name="my-tiny-clip").name == "my-tiny-clip"


def test_image_features_equal_model_features_for_every_input_form(metric_factory, hf, batch):
    images, captions = batch
    images = images[:6]
    expected = reference_image_features(hf, images)
    metric = metric_factory()
    floats = images.float() / 255
    forms = {
        "uint8 batch": images,
        "float batch": floats,
        "float64 batch": floats.double(),
        "list of uint8": list(images),
        "list of float": list(floats),
        "list of PIL": [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images],
    }
    for form, value in forms.items():
        features, _ = metric.extract_features(value, captions[:6])
        assert features.dtype == torch.float32, form
        assert torch.allclose(features.norm(dim=1), torch.ones(6), atol=1e-6), form
        assert torch.allclose(features.double(), expected, atol=2e-6), form


def test_images_of_different_sizes_in_a_list(metric_factory, hf):
    gen = torch.Generator().manual_seed(5)
    images = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8) for h, w in [(32, 32), (50, 70)]]
    features, _ = metric_factory().extract_features(images, ["a", "b"])
    expected = torch.cat([reference_image_features(hf, [image]) for image in images])
    assert torch.allclose(features.double(), expected, atol=2e-6)


def test_text_features_equal_model_features(metric_factory, hf, batch):
    _, captions = batch
    captions = captions[:5] + ["x"]  # different lengths, so the batch is padded
    _, features = metric_factory().extract_features(torch.zeros(6, 3, 32, 32, dtype=torch.uint8), captions)
    expected = reference_text_features(hf, [token_ids(hf, c) for c in captions])
    assert features.dtype == torch.float32
    assert torch.allclose(features.double(), expected, atol=2e-6)


def test_long_caption_is_truncated_by_the_tokenizer_keeping_end_of_text(metric_factory, hf):
    tokenizer = hf[1].tokenizer
    ids = token_ids(hf, LONG_CAPTION)
    assert len(ids) > TINY_CONTEXT_LENGTH and ids[-1] == tokenizer.eos_token_id
    # The tokenizer's truncation keeps the end-of-text token in the last position of the window.
    truncated = ids[: TINY_CONTEXT_LENGTH - 1] + [tokenizer.eos_token_id]
    sliced = ids[:TINY_CONTEXT_LENGTH]  # the known bug: slicing drops end-of-text
    assert tokenizer.eos_token_id not in sliced
    metric = metric_factory()
    _, features = metric.extract_features(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), [LONG_CAPTION, "short"])
    expected = reference_text_features(hf, [truncated])[0]
    wrong = reference_text_features(hf, [sliced])[0]
    assert torch.allclose(features[0].double(), expected, atol=2e-6)
    assert (features[0].double() - wrong).abs().max() > 1e-2  # slicing would have given another embedding
    # The short caption in the same padded batch is unaffected by the long one.
    assert torch.allclose(features[1].double(), reference_text_features(hf, [token_ids(hf, "short")])[0], atol=2e-6)


def test_model_dtype_is_used_and_features_are_float32(clip_dir, hf, batch):
    images, captions = batch
    extractor = load_clip(str(clip_dir), dtype=torch.float64)
    assert next(extractor.model.parameters()).dtype == torch.float64
    features = extractor.encode_images(images[:4])
    assert features.dtype == torch.float32
    assert torch.allclose(features.double(), reference_image_features(hf, images[:4]), atol=2e-6)
    half = load_clip(str(clip_dir), dtype=torch.bfloat16)
    text = half.encode_texts(captions[:4])
    assert text.dtype == torch.float32
    expected = reference_text_features(hf, [token_ids(hf, c) for c in captions[:4]])
    assert torch.allclose(text.double(), expected, atol=0.1)  # bfloat16 weights: close, not equal


def test_batch_size_does_not_change_features(clip_dir, batch):
    images, captions = batch
    whole = load_clip(str(clip_dir), batch_size=64)
    chunked = load_clip(str(clip_dir), batch_size=5)
    assert torch.allclose(whole.encode_images(images[:12]), chunked.encode_images(images[:12]), atol=1e-6)
    assert torch.allclose(whole.encode_texts(captions[:12]), chunked.encode_texts(captions[:12]), atol=1e-6)


# ------------------------------------------------------------------------------------------------ MID from raw inputs
def test_mid_from_raw_inputs_equals_mid_from_features(metric_factory, hf, batch):
    images, captions = batch
    ref_images, ref_captions = images[:40], captions[:40]
    cand_images, cand_captions = images[40:].flip(-1), captions[40:]  # mirrored images: a different candidate set
    x = reference_image_features(hf, ref_images)
    y = reference_text_features(hf, [token_ids(hf, c) for c in ref_captions])
    x0 = reference_image_features(hf, cand_images)
    y0 = reference_text_features(hf, [token_ids(hf, c) for c in cand_captions])

    metric = metric_factory(eps=EPS)
    metric.update(ref_images[:25], ref_captions[:25], real=True)
    metric.update(list(ref_images[25:]), ref_captions[25:], real=True)
    metric.update(cand_images, cand_captions, real=False)
    value = metric.compute().item()
    assert value == pytest.approx(mutual_information_divergence(x, y, x0, y0, eps=EPS).item(), abs=1e-4)
    assert value == pytest.approx(ref_mid(x, y, x0, y0, eps=EPS), abs=1e-4)
    pmi = metric.pmi(cand_images, cand_captions)
    assert torch.allclose(pmi, pointwise_mutual_information(x, y, x0, y0, eps=EPS), atol=1e-4)
    # Features are accepted too in model mode, and give the same numbers.
    feats = metric.extract_features(cand_images, cand_captions)
    assert torch.allclose(metric.pmi(*feats), pmi, atol=1e-12)


def test_forward_in_model_mode(metric_factory, batch):
    images, captions = batch
    metric = metric_factory(eps=EPS)
    assert metric(images[:40], captions[:40], real=True) is None
    value = metric(images[40:], captions[40:], real=False)
    assert torch.allclose(value, metric.pmi(images[40:], captions[40:]).mean(), atol=1e-12)


def test_empty_batch_in_model_mode_changes_nothing(metric_factory):
    metric = metric_factory()
    metric.update(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), [], real=True)
    metric.update([], [], real=True)
    assert metric.reference_moments.abs().sum() == 0


# ------------------------------------------------------------------------------------------------ the frozen model
def test_model_is_frozen_submodule_outside_state_dict(metric_factory, batch):
    images, captions = batch
    metric = metric_factory(eps=EPS)
    assert isinstance(metric.feature_extractor, torch.nn.Module)
    assert any(module is metric.feature_extractor for module in metric.children())
    assert all(not p.requires_grad for p in metric.parameters())
    metric.train()
    assert not metric.feature_extractor.model.training
    metric.update(images[:40], captions[:40], real=True)
    metric.update(images[40:], captions[40:], real=False)
    expected = metric.compute()

    saved = metric.state_dict()
    assert {"reference_moments", "candidate_moments"} <= set(saved)
    assert not [key for key in saved if key.startswith("feature_extractor")]
    assert saved["reference_moments"].dtype == torch.float64

    restored = metric_factory(eps=EPS)
    result = restored.load_state_dict(saved, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(restored.compute(), expected)
    assert torch.equal(metric.clone().compute(), expected)

    # Nested in a bigger module (as in a LightningModule), the prefix is handled too.
    outer = torch.nn.ModuleDict({"mid": metric})
    nested = outer.state_dict()
    assert "mid.reference_moments" in nested and not [k for k in nested if "feature_extractor" in k]
    fresh = torch.nn.ModuleDict({"mid": metric_factory(eps=EPS)})
    fresh.load_state_dict(nested, strict=True)
    assert torch.equal(fresh["mid"].compute(), expected)


def test_model_moves_with_the_metric(metric_factory):
    metric = metric_factory()
    metric.to(torch.device("cpu"))
    assert next(metric.feature_extractor.parameters()).device == metric.reference_moments.device
    metric.half()  # torchmetrics ignores dtype requests on a metric: neither states nor model change
    assert next(metric.feature_extractor.parameters()).dtype == torch.float32
    assert metric.reference_moments.dtype == torch.float64
    metric.feature_extractor.to(torch.float64)  # the model's dtype is set on the extractor (or by load_clip)
    assert next(metric.feature_extractor.parameters()).dtype == torch.float64
    assert metric.extract_features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), ["a"])[0].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_mode_on_cuda(metric_factory, batch):
    images, captions = batch
    cpu = metric_factory(eps=EPS)
    gpu = metric_factory(eps=EPS).to("cuda")
    assert next(gpu.feature_extractor.parameters()).is_cuda and gpu.reference_moments.is_cuda
    for metric in (cpu, gpu):
        metric.update(images[:40], captions[:40], real=True)
        metric.update(images[40:], captions[40:], real=False)
    assert gpu.compute().is_cuda
    assert gpu.compute().item() == pytest.approx(cpu.compute().item(), abs=1e-3)


def test_model_processor_pair(hf, metric_factory, batch):
    images, captions = batch
    model, processor = hf
    pair_metric = MutualInformationDivergence(feature=(model, processor))
    assert isinstance(pair_metric.feature_extractor, ClipFeatureExtractor)
    assert not any(p.requires_grad for p in model.parameters())
    a = pair_metric.extract_features(images[:4], captions[:4])
    b = metric_factory().extract_features(images[:4], captions[:4])
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(a, b))


# ------------------------------------------------------------------------------------------------ other encoders
class ToyEncoder(torch.nn.Module):
    """A user encoder with encode_images / encode_texts (features not normalised on purpose)."""

    name = "toy-encoder"

    def __init__(self):
        super().__init__()
        self.image_proj = torch.nn.Linear(3, 5)
        self.text_proj = torch.nn.Linear(2, 4)

    def encode_images(self, images):
        return self.image_proj(images.float().mean(dim=(2, 3)))

    def encode_texts(self, texts):
        stats = torch.tensor([[len(t), t.count(" ")] for t in texts], dtype=torch.float32)
        return self.text_proj(stats)


def test_object_with_encode_methods():
    torch.manual_seed(0)
    encoder = ToyEncoder()
    metric = MutualInformationDivergence(feature=encoder)
    assert (metric.image_dim, metric.text_dim) == (5, 4)  # discovered by a probe
    assert metric.feature_extractor_name == "toy-encoder"
    assert not any(p.requires_grad for p in encoder.parameters())
    assert any(module is encoder for module in metric.modules())  # it moves with the metric
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    texts = ["a b", "cc", "d e f"]
    image_features, text_features = metric.extract_features(images, texts)
    with torch.no_grad():
        raw_image, raw_text = encoder.encode_images(images), encoder.encode_texts(texts)
    assert torch.allclose(image_features, raw_image / raw_image.norm(dim=1, keepdim=True), atol=1e-6)
    assert torch.allclose(text_features, raw_text / raw_text.norm(dim=1, keepdim=True), atol=1e-6)
    assert not [k for k in metric.state_dict() if "proj" in k]


def test_two_callables_with_given_and_probed_dims():
    weight = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    calls = []

    def image_fn(images):
        calls.append(images)
        return images.float().mean(dim=(2, 3)) @ weight

    def text_fn(texts):
        return torch.tensor([[len(t), 1.0, 2.0] for t in texts])

    probed = MutualInformationDivergence(feature=(image_fn, text_fn))
    assert (probed.image_dim, probed.text_dim) == (6, 3) and len(calls) == 1
    given = CallableFeatureExtractor(image_fn, text_fn, name="mine", image_dim=6, text_dim=3)
    assert len(calls) == 1  # no probe when the sizes are given
    metric = MutualInformationDivergence(feature=given)
    assert metric.feature_extractor is given and metric.feature_extractor_name == "mine"
    wrong = CallableFeatureExtractor(image_fn, text_fn, image_dim=7, text_dim=3)
    with pytest.raises(ValueError, match="returned 6 features per row, expected 7"):
        wrong.encode_images(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"must return a \(2, dim\) tensor"):
        CallableFeatureExtractor(lambda im: torch.ones(1, 3), text_fn, image_dim=3).encode_images(
            torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
        )


def test_feature_argument_dispatch(clip_dir):
    assert as_feature_extractor(512) is None and as_feature_extractor((512, 768)) is None
    with pytest.raises(TypeError, match="`feature` must be"):
        MutualInformationDivergence(feature=3.5)
    with pytest.raises(TypeError, match="`feature` must be"):
        MutualInformationDivergence(feature=(1, "a"))
    with pytest.raises(TypeError, match="`feature` must be"):
        MutualInformationDivergence(feature=True)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_raw_inputs_leave_state_unchanged(metric_factory, batch):
    images, captions = batch
    metric = metric_factory(eps=EPS)
    metric.update(images[:40], captions[:40], real=True)
    before = metric.reference_moments.clone()
    cases = [
        ((images[:3], captions[:2]), ValueError, "3 images and 2 texts"),
        ((images[:1], "a cat"), TypeError, "single str"),
        ((images[:2], ["a", 3]), TypeError, "position 1"),
        ((images[:2].float(), captions[:2]), ValueError, r"values must lie in \[0, 1\]"),
        ((images[:2].int(), captions[:2]), TypeError, "uint8"),
        ((images[:2, :1], captions[:2]), ValueError, "3 colour channels"),
        ((images[0], captions[:1]), ValueError, r"\(N, 3, H, W\)"),
        ((["not an image"], captions[:1]), TypeError, "PIL image"),
        (("images", captions[:1]), TypeError, "`images` must be"),
    ]
    for (bad_images, bad_texts), error, match in cases:
        with pytest.raises(error, match=match):
            metric.update(bad_images, bad_texts, real=True)
        with pytest.raises(error, match=match):
            metric.pmi(bad_images, bad_texts)
        assert torch.equal(metric.reference_moments, before)
    nan_images = images[:2].float() / 255
    nan_images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="values must lie"):
        metric.update(nan_images, captions[:2], real=True)
    assert torch.equal(metric.reference_moments, before)


def test_features_mode_rejects_raw_inputs(batch):
    images, captions = batch
    metric = MutualInformationDivergence(feature=16)
    with pytest.raises(TypeError):
        metric.update(images[:2], captions[:2], real=True)
    with pytest.raises(TypeError, match="takes features, not images"):
        metric.extract_features(images[:2], captions[:2])


# ------------------------------------------------------------------------------------------------ loading errors
def test_missing_model_offline_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True, raising=False)
    for name in ("nobody-here/no-such-clip-model", str(tmp_path / "no-such-folder")):
        with pytest.raises(OSError, match="Could not load the CLIP model") as info:
            load_clip(name)
        assert repr(name) in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)
        with pytest.raises(OSError, match=repr(name).replace("/", ".")):
            MutualInformationDivergence(feature=name)


def test_folder_without_processor_files(tmp_path, clip_dir):
    model = transformers.CLIPModel.from_pretrained(clip_dir)
    model.save_pretrained(tmp_path / "weights-only")
    with pytest.raises(OSError, match="processor files"):
        load_clip(str(tmp_path / "weights-only"))


def _run_python(code):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)


def test_import_stays_light_and_missing_transformers_is_explained(clip_dir):
    # torchmetrics (1.9) itself imports transformers when it is installed (torchmetrics.functional.text.bert), so
    # the check is that mid_metric's own modules never need it: after torchmetrics is imported, any import of
    # transformers is made to fail, and mid_metric must still import and work with features.
    proc = _run_python(
        f"""
        import sys
        import torchmetrics
        for name in [n for n in sys.modules if n == "transformers" or n.startswith("transformers.")]:
            del sys.modules[name]
        sys.modules["transformers"] = None  # as if it were not installed: `import transformers` raises
        import torch
        import mid_metric, mid_metric.features, mid_metric.io.reference_files
        mid = mid_metric.MutualInformationDivergence(feature=(2, 2))
        mid.update(torch.randn(20, 2), torch.randn(20, 2), real=True)
        mid.update(torch.randn(20, 2), torch.randn(20, 2), real=False)
        print("VALUE:", float(mid.compute()))
        try:
            mid_metric.MutualInformationDivergence(feature={str(clip_dir)!r})
        except ImportError as error:
            print("ERROR:", error)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "VALUE:" in proc.stdout
    assert "needs Hugging Face transformers, which is not installed" in proc.stdout
    assert repr(str(clip_dir)) in proc.stdout and 'pip install ".[clip]"' in proc.stdout
    assert "mid-metric[" not in proc.stdout  # the package is on no index: the hint must work from a clone


# ------------------------------------------------------------------------------------------------ model identity
def test_local_model_identity_does_not_depend_on_the_path(clip_dir, tmp_path, monkeypatch):
    identity = expected_identity(clip_dir)
    assert identity.startswith("local:clip@sha256:") and len(identity.rsplit(":", 1)[1]) == 16
    shutil.copytree(clip_dir, tmp_path / "tinyclip")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    assert model_identity("tinyclip") == identity
    assert load_clip("tinyclip").name == identity
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert model_identity("../tinyclip") == model_identity(str(clip_dir)) == identity
    # A hub id stays a hub id; an identity is its own identity.
    assert model_identity("openai/clip-vit-large-patch14") == "openai/clip-vit-large-patch14"
    assert model_identity(identity) == identity
    with pytest.raises(OSError, match="no such folder"):
        model_identity("./no-such-model")
    with pytest.raises(OSError, match="identity recorded for a local model folder"):
        load_clip(identity)


def test_local_model_identity_follows_the_weights(clip_dir, hf, tmp_path):
    other = build_tiny_clip(tmp_path / "other", seed=1)
    assert model_identity(str(other)) == expected_identity(other) != expected_identity(clip_dir)
    # A sharded checkpoint: its shards in name order, hashed as one stream.
    model, processor = hf
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    processor.save_pretrained(tmp_path / "sharded")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert model_identity(str(tmp_path / "sharded")) == expected_identity(tmp_path / "sharded", shards)
    # A readable name from the config's hub id, when the folder was saved from a hub model.
    config = json.loads((other / "config.json").read_text())
    config["_name_or_path"] = "openai/clip-vit-base-patch32"
    (other / "config.json").write_text(json.dumps(config))
    renamed = model_identity(str(other))
    assert renamed.startswith("local:openai/clip-vit-base-patch32@sha256:")
    assert same_model(renamed, expected_identity(other)) and not same_model(renamed, expected_identity(clip_dir))
    config["_name_or_path"] = str(tmp_path / "some" / "path")  # a path is no name: model_type instead
    (other / "config.json").write_text(json.dumps(config))
    assert model_identity(str(other)) == expected_identity(other)


def test_model_processor_pair_from_a_folder_is_named_by_identity(clip_dir):
    model = transformers.CLIPModel.from_pretrained(str(clip_dir))
    processor = transformers.CLIPProcessor.from_pretrained(str(clip_dir))
    assert ClipFeatureExtractor(model, processor).name == expected_identity(clip_dir)
    assert ClipFeatureExtractor(model, processor, name="mine").name == "mine"


def test_reference_saved_with_a_relative_model_path_loads_from_another_folder(clip_dir, batch, tmp_path, monkeypatch):
    images, captions = batch
    shutil.copytree(clip_dir, tmp_path / "tinyclip")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    metric = MutualInformationDivergence(feature="tinyclip", eps=EPS)
    metric.update(images[:40], captions[:40], real=True)
    metric.save_reference("ref.safetensors")
    metric.update(images[40:], captions[40:], real=False)
    expected = metric.compute().item()
    monkeypatch.chdir(tmp_path / "elsewhere")
    scorer = MutualInformationDivergence.from_reference("../ref.safetensors", feature="../tinyclip")  # name checked
    scorer.update(images[40:], captions[40:], real=False)
    assert scorer.compute().item() == pytest.approx(expected, abs=1e-10)
