"""Reference statistics files: round trips, atomic writes, metadata and every kind of bad file."""

from __future__ import annotations

import json
import math
import os
import pickle
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _ddp import run_in_processes
from reference_impl import ref_mid
from safetensors.torch import save as safetensors_save
from safetensors.torch import save_file

import mid_metric
from mid_metric import MutualInformationDivergence, moments
from mid_metric.features import CallableFeatureExtractor
from mid_metric.functional import pointwise_mutual_information
from mid_metric.io.reference_files import (
    FORMAT_NAME,
    FORMAT_VERSION,
    TENSOR_NAME,
    load_reference_statistics,
    save_reference_statistics,
)

DX, DY = 4, 3


@pytest.fixture(scope="module")
def pairs():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(90, DX, generator=gen, dtype=torch.float64)
    y = 0.6 * x[:, :DY] + 0.8 * torch.randn(90, DY, generator=gen, dtype=torch.float64)
    x0 = x[:40] + 0.3 * torch.randn(40, DX, generator=gen, dtype=torch.float64)
    return x, y, x0, y[:40]


def fitted(x, y, **kwargs):
    metric = MutualInformationDivergence(feature=(DX, DY), **kwargs)
    for start in range(0, x.shape[0], 32):
        metric.update(x[start : start + 32], y[start : start + 32], real=True)
    return metric


def read_header(path):
    """Parse a safetensors header independently: 8-byte little-endian length, then JSON."""
    data = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size])


def write_stats(path, packed, **metadata_overrides):
    """Write a safetensors file shaped like ours, with chosen metadata (to forge bad files)."""
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "feature_extractor": "toy",
        "image_dim": str(DX),
        "text_dim": str(DY),
        "num_samples": str(int(packed[0])),
        "eps": "0.0",
        "library_version": mid_metric.__version__,
    }
    metadata.update(metadata_overrides)
    metadata = {k: v for k, v in metadata.items() if v is not None}
    Path(path).write_bytes(safetensors_save({TENSOR_NAME: packed}, metadata=metadata))
    return path


@pytest.fixture
def good_file(tmp_path, pairs):
    x, y, _, _ = pairs
    return fitted(x, y).save_reference(tmp_path / "ref.safetensors", feature_extractor="toy")


# ------------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("entry", ["from_reference", "reference_arg", "load_reference"])
def test_round_trip_scores_equal_original_reference(tmp_path, pairs, entry):
    x, y, x0, y0 = pairs
    original = fitted(x, y)
    path = original.save_reference(tmp_path / "ref.safetensors")
    if entry == "from_reference":
        loaded = MutualInformationDivergence.from_reference(path)
    elif entry == "reference_arg":
        loaded = MutualInformationDivergence(feature=(DX, DY), reference=path)
    else:
        loaded = MutualInformationDivergence(feature=(DX, DY))
        loaded.load_reference(str(path))
    for metric in (original, loaded):
        metric.update(x0, y0, real=False)
    assert abs(loaded.compute().item() - original.compute().item()) <= 1e-12
    # ... and both equal the independent two-pass computation.
    assert loaded.compute().item() == pytest.approx(ref_mid(x, y, x0, y0), rel=1e-9)
    assert torch.allclose(loaded.pmi(x0, y0), pointwise_mutual_information(x, y, x0, y0), rtol=0, atol=1e-10)
    assert torch.allclose(loaded.pmi(x0, y0), original.pmi(x0, y0), rtol=0, atol=1e-12)
    result = loaded.compute_result()
    assert result.num_reference == x.shape[0]


def test_metadata_is_complete(tmp_path, pairs):
    x, y, _, _ = pairs
    path = fitted(x, y, eps=5e-4).save_reference(tmp_path / "ref.safetensors", feature_extractor="my-clip")
    header = read_header(path)
    meta = header["__metadata__"]
    assert meta["format"] == FORMAT_NAME
    assert meta["format_version"] == "1"
    assert meta["feature_extractor"] == "my-clip"
    assert (meta["image_dim"], meta["text_dim"], meta["num_samples"]) == (str(DX), str(DY), str(x.shape[0]))
    assert float(meta["eps"]) == 5e-4
    assert meta["library_version"] == mid_metric.__version__
    # One float64 tensor of the packed size.
    assert header[TENSOR_NAME]["dtype"] == "F64" and header[TENSOR_NAME]["shape"] == [(DX + DY + 1) ** 2]
    packed, parsed = load_reference_statistics(path)
    assert parsed["num_samples"] == x.shape[0] and parsed["eps"] == 5e-4 and parsed["feature_extractor"] == "my-clip"
    # The statistics are the two-pass mean and covariance of z = [x; y].
    mean, scatter = moments.mean_and_scatter(packed)
    z = torch.cat([x, y], dim=1)
    assert torch.allclose(mean, z.mean(0), atol=1e-12)
    assert torch.allclose(scatter / (z.shape[0] - 1), torch.cov(z.T), atol=1e-12)


def test_from_reference_takes_eps_from_file_unless_given(tmp_path, pairs):
    x, y, _, _ = pairs
    path = fitted(x, y, eps=1e-3).save_reference(tmp_path / "ref.safetensors")
    assert MutualInformationDivergence.from_reference(path).eps == 1e-3
    assert MutualInformationDivergence.from_reference(path, eps=0.0).eps == 0.0


def test_loaded_reference_survives_reset_when_kept(tmp_path, pairs):
    x, y, x0, y0 = pairs
    path = fitted(x, y).save_reference(tmp_path / "ref.safetensors")
    kept = MutualInformationDivergence.from_reference(path, reset_real_features=False)
    kept.update(x0[:20], y0[:20], real=False)
    kept.compute()
    kept.reset()
    kept.update(x0, y0, real=False)
    assert kept.compute().item() == pytest.approx(ref_mid(x, y, x0, y0), rel=1e-9)

    dropped = MutualInformationDivergence.from_reference(path)  # reset_real_features=True: like update(real=True)
    dropped.reset()
    dropped.update(x0, y0, real=False)
    with pytest.raises(ValueError, match="No reference pairs"):
        dropped.compute()


def test_loaded_reference_adds_to_pairs_already_seen(tmp_path, pairs):
    x, y, x0, y0 = pairs
    path = fitted(x[:50], y[:50]).save_reference(tmp_path / "first.safetensors")
    metric = MutualInformationDivergence(feature=(DX, DY))
    metric.update(x[50:], y[50:], real=True)
    metric.load_reference(path)
    metric.update(x0, y0, real=False)
    assert metric.compute().item() == pytest.approx(ref_mid(x, y, x0, y0), rel=1e-9)
    # Saving again writes the whole reference (loaded + seen).
    _, meta = load_reference_statistics(metric.save_reference(tmp_path / "all.safetensors"))
    assert meta["num_samples"] == x.shape[0]


def test_forward_with_loaded_kept_reference(tmp_path, pairs):
    x, y, x0, y0 = pairs
    path = fitted(x, y).save_reference(tmp_path / "ref.safetensors")
    metric = MutualInformationDivergence.from_reference(path, reset_real_features=False)
    for _ in range(2):
        batch = metric(x0[:10], y0[:10], real=False)
        assert torch.allclose(batch, pointwise_mutual_information(x, y, x0[:10], y0[:10]).mean(), atol=1e-10)
        metric(x0[10:], y0[10:], real=False)
        assert metric.compute().item() == pytest.approx(ref_mid(x, y, x0, y0), rel=1e-9)
        metric.reset()


def test_state_dict_carries_loaded_reference(tmp_path, pairs):
    x, y, x0, y0 = pairs
    path = fitted(x, y).save_reference(tmp_path / "ref.safetensors")
    source = MutualInformationDivergence.from_reference(path)
    source.update(x0[:20], y0[:20], real=False)
    saved = source.state_dict()
    assert "loaded_reference_moments" in saved
    restored = MutualInformationDivergence(feature=(DX, DY))
    restored.load_state_dict(saved)
    restored.update(x0[20:], y0[20:], real=False)
    assert restored.compute().item() == pytest.approx(ref_mid(x, y, x0, y0), rel=1e-9)
    # A plain metric's state_dict has no such key.
    assert "loaded_reference_moments" not in fitted(x, y).state_dict()


def test_clone_and_pickle_keep_loaded_reference(tmp_path, pairs):
    x, y, x0, y0 = pairs
    metric = MutualInformationDivergence.from_reference(fitted(x, y).save_reference(tmp_path / "r.safetensors"))
    metric.update(x0, y0, real=False)
    expected = ref_mid(x, y, x0, y0)
    for copy in (metric.clone(), pickle.loads(pickle.dumps(metric))):
        assert copy.compute().item() == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------------------ atomic write
def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, pairs, monkeypatch):
    x, y, _, _ = pairs
    path = tmp_path / "ref.safetensors"
    fitted(x[:60], y[:60]).save_reference(path)
    before = path.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["ref.safetensors"]

    def failing_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        fitted(x, y).save_reference(path)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["ref.safetensors"]  # and the temporary file is gone

    fitted(x, y).save_reference(path)  # overwriting works
    assert load_reference_statistics(path)[1]["num_samples"] == x.shape[0]
    assert sorted(os.listdir(tmp_path)) == ["ref.safetensors"]


def test_save_errors(tmp_path, pairs):
    x, y, _, _ = pairs
    with pytest.raises(ValueError, match="no reference pairs"):
        MutualInformationDivergence(feature=(DX, DY)).save_reference(tmp_path / "empty.safetensors")
    with pytest.raises(FileNotFoundError, match="folder does not exist"):
        fitted(x, y).save_reference(tmp_path / "missing" / "ref.safetensors")
    packed = moments.from_features(torch.cat([x, y], 1))
    kwargs = dict(image_dim=DX, text_dim=DY, feature_extractor="toy", eps=0.0)
    with pytest.raises(ValueError, match="1-D tensor of 64 values"):
        save_reference_statistics(tmp_path / "a.safetensors", packed[:-1], **kwargs)
    bad = packed.clone()
    bad[5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        save_reference_statistics(tmp_path / "a.safetensors", bad, **kwargs)
    with pytest.raises(ValueError, match="eps"):
        save_reference_statistics(tmp_path / "a.safetensors", packed, **{**kwargs, "eps": -1.0})
    with pytest.raises(TypeError, match="image_dim"):
        save_reference_statistics(tmp_path / "a.safetensors", packed, **{**kwargs, "image_dim": 4.0})
    assert sorted(os.listdir(tmp_path)) == []


# ------------------------------------------------------------------------------------------------ bad files
def assert_rejected(path, match, exc=ValueError):
    with pytest.raises(exc, match=match) as info:
        load_reference_statistics(path)
    assert str(path) in str(info.value)  # the message names the file
    # The metric refuses it the same way, and stays usable.
    metric = MutualInformationDivergence(feature=(DX, DY))
    with pytest.raises(exc, match=match):
        metric.load_reference(path)
    assert metric._loaded.count == 0


def test_missing_file(tmp_path):
    assert_rejected(tmp_path / "nope.safetensors", "does not exist", FileNotFoundError)


@pytest.mark.parametrize("keep", [0, 5, 8, 100, -1])
def test_truncated_file(tmp_path, good_file, keep):
    data = good_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    assert_rejected(cut, "truncated|not a safetensors")


def test_corrupt_header(tmp_path, good_file):
    data = bytearray(good_file.read_bytes())
    data[8:20] = b"\xff" * 12  # the JSON header is garbage now
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(bytes(data))
    assert_rejected(bad, "not valid JSON|corrupt")


def test_not_a_safetensors_file(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("mu and sigma live elsewhere\n" * 10)
    assert_rejected(text, "truncated or not a safetensors")
    npz = tmp_path / "stats.npz"
    import numpy as np

    np.savez(npz, mu=np.zeros(3), sigma=np.eye(3))
    assert_rejected(npz, "not a safetensors|truncated")


class _Trap:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_file_is_rejected_without_running_code(tmp_path):
    marker = tmp_path / "code-ran"
    for name, writer in (
        ("trap.pkl", lambda f: pickle.dump({"stats": _Trap(marker)}, f)),
        ("trap.pt", lambda f: torch.save({"stats": _Trap(marker)}, f)),
    ):
        path = tmp_path / name
        with open(path, "wb") as stream:
            writer(stream)
        assert_rejected(path, "not a safetensors|truncated|corrupt")
    assert not marker.exists()


def test_other_safetensors_file(tmp_path):
    weights = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(weights))
    assert_rejected(weights, "without the metadata format")
    weights_with_meta = tmp_path / "model-meta.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(weights_with_meta), metadata={"format": "pt"})
    assert_rejected(weights_with_meta, "without the metadata format")


def test_our_metadata_without_our_tensor(tmp_path, good_file):
    packed, _ = load_reference_statistics(good_file)
    path = tmp_path / "renamed.safetensors"
    metadata = read_header(good_file)["__metadata__"]
    path.write_bytes(safetensors_save({"something_else": packed}, metadata=metadata))
    assert_rejected(path, "no tensor named 'reference_moments'")


def test_future_format_version(tmp_path, good_file):
    packed, _ = load_reference_statistics(good_file)
    path = write_stats(tmp_path / "future.safetensors", packed, format_version=str(FORMAT_VERSION + 1))
    assert_rejected(path, "format version 2, newer .* upgrade")
    path = write_stats(tmp_path / "garbled.safetensors", packed, format_version="one")
    assert_rejected(path, "format_version")


def test_nan_inside_statistics(tmp_path, good_file):
    packed, _ = load_reference_statistics(good_file)
    for index in (1, 1 + DX + DY + 2, packed.shape[0] - 1):  # shift, shifted sum, outer-product sum
        broken = packed.clone()
        broken[index] = float("nan")
        assert_rejected(write_stats(tmp_path / f"nan{index}.safetensors", broken), "NaN or Inf")
    broken = packed.clone()
    broken[-3] = float("inf")
    assert_rejected(write_stats(tmp_path / "inf.safetensors", broken), "NaN or Inf")


def test_inconsistent_sizes(tmp_path, good_file):
    packed, _ = load_reference_statistics(good_file)
    # Metadata dims that do not fit the tensor.
    assert_rejected(write_stats(tmp_path / "d.safetensors", packed, image_dim=str(DX + 1)), "need F64 and")
    # A tensor of the wrong size for the declared dims.
    assert_rejected(write_stats(tmp_path / "s.safetensors", packed[:-1]), "need F64 and")
    # A float32 tensor.
    assert_rejected(write_stats(tmp_path / "f.safetensors", packed.float()), "dtype F32")
    # A count that disagrees with the metadata.
    assert_rejected(write_stats(tmp_path / "n.safetensors", packed, num_samples="7"), "num_samples=7")
    # Missing or invalid metadata.
    assert_rejected(write_stats(tmp_path / "m.safetensors", packed, text_dim=None), "'text_dim' is missing")
    assert_rejected(write_stats(tmp_path / "z.safetensors", packed, image_dim="0"), "must be positive")
    assert_rejected(write_stats(tmp_path / "e.safetensors", packed, eps="-1"), "'eps'")


def test_corrupt_data_offsets(tmp_path, good_file):
    data = good_file.read_bytes()
    header = read_header(good_file)
    header[TENSOR_NAME]["data_offsets"] = [0, 16]
    blob = json.dumps(header).encode()
    bad = tmp_path / "offsets.safetensors"
    bad.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + struct.unpack("<Q", data[:8])[0] :])
    assert_rejected(bad, "truncated or corrupt")


# ------------------------------------------------------------------------------------------------ metric checks
def test_dims_must_match_metric(good_file, pairs):
    x, y, x0, y0 = pairs
    metric = MutualInformationDivergence(feature=(DY, DX))
    metric.update(y, x, real=True)
    before = metric.reference_moments.clone()
    with pytest.raises(ValueError, match=r"\(image_dim, text_dim\) = \(4, 3\), but this metric has \(3, 4\)"):
        metric.load_reference(good_file)
    assert torch.equal(metric.reference_moments, before) and metric._loaded.count == 0
    with pytest.raises(ValueError, match="image_dim, text_dim"):
        MutualInformationDivergence.from_reference(good_file, feature=5)
    with pytest.raises(ValueError, match="image_dim, text_dim"):
        MutualInformationDivergence(feature=7, reference=good_file)


def _toy_extractor(name):
    weight = torch.randn(3, DX, generator=torch.Generator().manual_seed(0))
    return CallableFeatureExtractor(
        lambda images: images.float().mean(dim=(2, 3)) @ weight,
        lambda texts: torch.ones(len(texts), DY),
        name=name,
    )


def test_feature_extractor_name_is_checked(good_file, pairs):
    # good_file was written with feature_extractor="toy".
    other = _toy_extractor("some-other-clip")
    with pytest.raises(ValueError, match="'toy', but this metric uses 'some-other-clip'.*not comparable"):
        MutualInformationDivergence(feature=other, reference=good_file)
    with pytest.raises(ValueError, match="not comparable"):
        MutualInformationDivergence.from_reference(good_file, feature=other)
    # Opting out.
    metric = MutualInformationDivergence.from_reference(good_file, feature=other, check_feature_extractor=False)
    assert metric._loaded.count == pairs[0].shape[0]
    metric = MutualInformationDivergence(feature=other)
    metric.load_reference(good_file, check_feature_extractor=False)
    assert metric._loaded.count == pairs[0].shape[0]
    # The same name passes.
    assert MutualInformationDivergence(feature=_toy_extractor("toy"), reference=good_file)._loaded.count > 0
    # A features-mode metric has no name of its own and adopts the file's, which it writes back.
    plain = MutualInformationDivergence.from_reference(good_file)
    assert plain.feature_extractor_name == "toy"


def test_loads_onto_metric_device(good_file):
    metric = MutualInformationDivergence(feature=(DX, DY)).to(torch.device("cpu"))
    metric.load_reference(good_file)
    assert metric._loaded.moments.device == metric.reference_moments.device
    assert metric._loaded.moments.dtype == torch.float64
    metric.half()  # dtype requests keep the statistics float64
    assert metric._loaded.moments.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loads_onto_cuda_and_follows_moves(good_file, pairs):
    x, y, x0, y0 = pairs
    metric = MutualInformationDivergence(feature=(DX, DY)).to("cuda")
    metric.load_reference(good_file)
    assert metric._loaded.moments.is_cuda
    metric.update(x0, y0, real=False)
    assert metric.compute().is_cuda
    assert metric.compute().item() == pytest.approx(ref_mid(x, y, x0, y0), rel=1e-9)
    moved = MutualInformationDivergence.from_reference(good_file).to("cuda")
    assert moved._loaded.moments.is_cuda
    moved.cpu()
    assert moved._loaded.moments.device.type == "cpu"


# ------------------------------------------------------------------------------------------------ DDP
def _ddp_worker(rank, world_size, path, out_dir):
    gen = torch.Generator().manual_seed(11)
    x0 = torch.randn(30, DX, generator=gen, dtype=torch.float64)
    y0 = torch.randn(30, DY, generator=gen, dtype=torch.float64)
    metric = MutualInformationDivergence.from_reference(path)  # every rank loads the same file
    share = slice(0, 10) if rank == 0 else slice(10, 30)
    metric.update(x0[share], y0[share], real=False)
    value = metric.compute()
    metric.save_reference(os.path.join(out_dir, "resaved.safetensors"))
    return {"mid": value, "x0": x0, "y0": y0}


@pytest.mark.slow
def test_ddp_loaded_reference_is_counted_once(tmp_path, pairs):
    x, y, _, _ = pairs
    path = fitted(x, y).save_reference(tmp_path / "ref.safetensors")
    results = run_in_processes(_ddp_worker, str(path), str(tmp_path))
    expected = ref_mid(x, y, results[0]["x0"], results[0]["y0"])
    for result in results:
        assert result["mid"].item() == pytest.approx(expected, rel=1e-9)
    # The file re-saved under DDP holds the reference once, not once per rank.
    assert load_reference_statistics(tmp_path / "resaved.safetensors")[1]["num_samples"] == x.shape[0]


# ------------------------------------------------------------------------------------------------ corruption
def data_offset(path, index):
    """Byte offset in the file of element ``index`` of the stored tensor (independent header parsing)."""
    data = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    begin = json.loads(data[8 : 8 + size])[TENSOR_NAME]["data_offsets"][0]
    return 8 + size + begin + 8 * index


def outer_index(row, column):
    dim = DX + DY
    return 1 + 2 * dim + row * dim + column


def flip(path, offset, mask, out):
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= mask
    Path(out).write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("byte", [2, 3, 5, 6, 7])
@pytest.mark.parametrize("entry", [(5, 2), (6, 0), (1, 0)])
def test_flipped_byte_in_the_scatter_matrix_is_refused(tmp_path, good_file, pairs, byte, entry):
    # One flipped byte in the lower triangle of S2. The file records a checksum of its statistics, ...
    offset = data_offset(good_file, outer_index(*entry)) + byte
    bad = flip(good_file, offset, 0x10, tmp_path / "flipped.safetensors")
    assert_rejected(bad, "do not match the SHA-256 checksum")
    # ... and files without one (mid-metric 0.1.0) are checked for symmetry.
    packed = moments.symmetrized(moments.from_features(torch.cat(pairs[:2], 1)))
    old_style = write_stats(tmp_path / "old.safetensors", packed)
    assert "tensor_sha256" not in read_header(old_style)["__metadata__"]
    load_reference_statistics(old_style)  # loads before the flip
    offset = data_offset(old_style, outer_index(*entry)) + byte
    assert_rejected(flip(old_style, offset, 0x10, tmp_path / "old-flipped.safetensors"), "not symmetric")


def test_flipped_byte_in_the_diagonal_or_sums_is_refused(tmp_path, good_file):
    for index in (outer_index(3, 3), 1 + DX + DY + 2, 2):  # a diagonal entry, S1, the shift
        offset = data_offset(good_file, index) + 6
        bad = flip(good_file, offset, 0x10, tmp_path / f"flipped{index}.safetensors")
        assert_rejected(bad, "checksum")


def test_scatter_matrix_must_be_a_real_scatter_matrix(tmp_path, pairs):
    x, y, _, _ = pairs
    z = torch.cat([x, y], 1)
    n = z.shape[0]
    packed = moments.symmetrized(moments.from_features(z))
    fields = moments.unpack(packed)

    negative = packed.clone()
    moments.unpack(negative).shifted_outer_sum[2, 2] *= -1
    assert_rejected(write_stats(tmp_path / "neg.safetensors", negative), "negative diagonal entry")

    # Off-diagonal entries beyond Cauchy-Schwarz (a correlation of 2), symmetric so that only this check sees it.
    wide = packed.clone()
    outer = moments.unpack(wide).shifted_outer_sum
    bound = math.sqrt(float(outer[4, 4] * outer[1, 1]))
    outer[4, 1] = outer[1, 4] = 2 * bound
    assert_rejected(write_stats(tmp_path / "wide.safetensors", wide), r"correlation outside \[-1, 1\]")

    # The same pairs described about a shift far from their mean (a valid representation, written by hand) ...
    delta = torch.full((DX + DY,), 10.0, dtype=torch.float64)
    d = z - (fields.shift + delta)
    moved = moments.empty_moments(DX + DY)
    parts = moments.unpack(moved)
    parts.count.fill_(n)
    parts.shift.copy_(fields.shift + delta)
    parts.shifted_sum.copy_(d.sum(0))
    parts.shifted_outer_sum.copy_(d.T @ d)
    load_reference_statistics(write_stats(tmp_path / "moved.safetensors", moved))
    # ... with a count that contradicts the sums: sum(d)^2 = n^2 100 > count * sum(d^2) = count * n * 100-ish.
    wrong = moved.clone()
    wrong[0] = n // 2
    assert_rejected(write_stats(tmp_path / "count.safetensors", wrong), "inconsistent with its count of 45 pairs")


def test_files_symmetric_to_rounding_only_still_load(tmp_path, pairs):
    # mid-metric 0.1.0 summed the full matrix, whose two triangles could differ in the last bits.
    packed = moments.symmetrized(moments.from_features(torch.cat(pairs[:2], 1)))
    outer = moments.unpack(packed).shifted_outer_sum
    upper = torch.triu(torch.ones_like(outer, dtype=torch.bool), diagonal=1)
    outer[upper] = outer[upper] * (1 + 4e-16)
    assert not torch.equal(outer, outer.T)
    loaded, meta = load_reference_statistics(write_stats(tmp_path / "old.safetensors", packed))
    assert torch.equal(loaded, packed)
    assert meta["image_rms_norm"] is None and meta["text_rms_norm"] is None  # not recorded by 0.1.0


def test_rms_norms_are_recorded(tmp_path, pairs):
    x, y, _, _ = pairs
    path = fitted(x, y).save_reference(tmp_path / "ref.safetensors")
    meta = read_header(path)["__metadata__"]
    assert float(meta["image_rms_norm"]) == pytest.approx(float(x.square().sum(1).mean().sqrt()), rel=1e-12)
    assert float(meta["text_rms_norm"]) == pytest.approx(float(y.square().sum(1).mean().sqrt()), rel=1e-12)
    _, parsed = load_reference_statistics(path)
    assert parsed["image_rms_norm"] == float(meta["image_rms_norm"])
    # L2-normalised features record 1.
    unit = fitted(x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True))
    _, parsed = load_reference_statistics(unit.save_reference(tmp_path / "unit.safetensors"))
    assert abs(parsed["image_rms_norm"] - 1) < 1e-12 and abs(parsed["text_rms_norm"] - 1) < 1e-12
    packed, _ = load_reference_statistics(path)
    assert_rejected(write_stats(tmp_path / "norm.safetensors", packed, image_rms_norm="-1"), "'image_rms_norm'")


# ------------------------------------------------------------------------------------------------ reading
LARGE_FILE_CHECK = """
import resource, sys
from mid_metric.io.reference_files import load_reference_statistics

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[1:]:
    try:
        load_reference_statistics(path)
    except ValueError as error:
        print("REFUSED", error)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("GROWTH_KIB", after - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux")
def test_large_file_of_another_kind_is_refused_without_reading_it(tmp_path):
    gib = 1 << 30
    # A safetensors file of model weights with a 1 GiB tensor, and 1 GiB of zeros (sparse files: no disk used).
    weights = tmp_path / "weights.safetensors"
    header = json.dumps({"weight": {"dtype": "F32", "shape": [gib // 4], "data_offsets": [0, gib]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(weights, "wb") as stream:
        stream.write(struct.pack("<Q", len(header)) + header)
        stream.truncate(8 + len(header) + gib)
    zeros = tmp_path / "zeros.safetensors"
    with open(zeros, "wb") as stream:
        stream.truncate(gib)
    claims = tmp_path / "claims.safetensors"  # announces a header far larger than the file
    claims.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    proc = subprocess.run(
        [sys.executable, "-c", LARGE_FILE_CHECK, str(weights), str(zeros), str(claims)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len([line for line in lines if line.startswith("REFUSED")]) == 3, proc.stdout
    assert "weights.safetensors" in lines[0] and "without the metadata format" in lines[0]
    assert "zeros.safetensors" in lines[1] and "not valid JSON" in lines[1]
    assert "claims.safetensors" in lines[2] and "claims 1099511627776 bytes" in lines[2]
    growth_kib = int(lines[-1].split()[1])
    assert growth_kib < 64 * 1024, proc.stdout  # reading either file whole would take 1 GiB


def test_trailing_data_is_refused(tmp_path, good_file):
    longer = tmp_path / "longer.safetensors"
    longer.write_bytes(good_file.read_bytes() + b"\0" * 8)
    assert_rejected(longer, "trailing data")


def test_folder_and_empty_paths(tmp_path, pairs):
    x, y, _, _ = pairs
    folder = tmp_path / "refs"
    folder.mkdir()
    assert_rejected(folder, "is a folder", IsADirectoryError)
    with pytest.raises(ValueError, match="`path` is empty"):
        load_reference_statistics("")
    metric = fitted(x, y)
    with pytest.raises(ValueError, match="`path` is empty"):
        metric.save_reference("")
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        metric.save_reference(folder)
    assert sorted(os.listdir(tmp_path)) == ["refs"] and os.listdir(folder) == []


# ------------------------------------------------------------------------------------------------ permissions
def test_new_files_get_the_umask_permissions_and_replaced_files_keep_theirs(tmp_path, pairs):
    x, y, _, _ = pairs
    metric = fitted(x, y)
    old = os.umask(0o022)
    try:
        for umask, expected in ((0o022, 0o644), (0o027, 0o640), (0o002, 0o664)):
            os.umask(umask)
            path = metric.save_reference(tmp_path / f"ref-{umask:o}.safetensors")
            with open(tmp_path / f"plain-{umask:o}", "w"):
                pass  # what open() gives, for comparison
            assert stat.S_IMODE(os.stat(path).st_mode) == expected
            assert stat.S_IMODE(os.stat(tmp_path / f"plain-{umask:o}").st_mode) == expected
        # Replacing a file keeps its permissions, as open(path, "w") would.
        os.umask(0o077)
        shared = tmp_path / "ref-22.safetensors"
        os.chmod(shared, 0o664)
        metric.save_reference(shared)
        assert stat.S_IMODE(os.stat(shared).st_mode) == 0o664
    finally:
        os.umask(old)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
