"""CUDA variants: states and compute stay on the GPU and match the CPU result. Skipped cleanly without CUDA."""

from __future__ import annotations

import pytest
import torch
from reference_impl import ClipLikeDistribution, ref_mid, ref_pmi, well_conditioned_pairs

from mid_metric import MutualInformationDivergence
from mid_metric import functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

REL = 1e-10
HARD_ABS = 5e-9
DX, DY = 6, 5


def _feed(metric, x, y, x0, y0, batch_size=64):
    for start in range(0, x.shape[0], batch_size):
        metric.update(x[start : start + batch_size], y[start : start + batch_size], real=True)
    for start in range(0, x0.shape[0], batch_size):
        metric.update(x0[start : start + batch_size], y0[start : start + batch_size], real=False)
    return metric


@pytest.fixture(scope="module")
def data():
    x, y = well_conditioned_pairs(400, DX, DY, seed=0)
    x0, y0 = well_conditioned_pairs(300, DX, DY, seed=1, strength=0.3)
    return x, y, x0, y0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_metric_on_cuda_matches_cpu(data, dtype):
    cast = [t.to(dtype) for t in data]
    cpu_value = _feed(MutualInformationDivergence(feature=(DX, DY)), *cast).compute()
    metric = MutualInformationDivergence(feature=(DX, DY)).to("cuda")
    _feed(metric, *[t.cuda() for t in cast], batch_size=7)
    for value in metric.metric_state.values():
        assert value.device.type == "cuda" and value.dtype == torch.float64
    result = metric.compute_result()
    for tensor in (result.mid, result.mutual_information, result.distance):
        assert tensor.device.type == "cuda" and tensor.dtype == torch.float64
    assert result.mid.item() == pytest.approx(cpu_value.item(), rel=REL, abs=0.0)
    assert result.mid.item() == pytest.approx(ref_mid(*cast), rel=REL, abs=0.0)
    pmi = metric.pmi(cast[2].cuda(), cast[3].cuda())
    assert pmi.device.type == "cuda" and pmi.dtype == torch.float64
    torch.testing.assert_close(pmi.cpu(), ref_pmi(*cast), rtol=1e-9, atol=0)


def test_cpu_features_into_cuda_metric(data):
    metric = MutualInformationDivergence(feature=(DX, DY)).to("cuda")
    _feed(metric, *data)  # CPU features are moved to the state's device
    value = metric.compute()
    assert value.device.type == "cuda"
    assert value.item() == pytest.approx(ref_mid(*data), rel=REL, abs=0.0)


def test_hard_clip_like_on_cuda():
    dist = ClipLikeDistribution(64, 64, seed=0)
    x, y = dist.sample(4000, seed=1)
    x0, y0 = dist.sample(3000, seed=2, rho_scale=0.95)
    metric = MutualInformationDivergence(feature=64).to("cuda")
    _feed(metric, x.cuda(), y.cuda(), x0.cuda(), y0.cuda(), batch_size=256)
    assert abs(metric.compute().item() - ref_mid(x, y, x0, y0)) <= HARD_ABS
    got = F.mutual_information_divergence(x.cuda(), y.cuda(), x0.cuda(), y0.cuda())
    assert got.device.type == "cuda"
    assert abs(got.item() - ref_mid(x, y, x0, y0)) <= HARD_ABS


def test_functional_on_cuda(data):
    gpu = [t.cuda() for t in data]
    for got, expected in (
        (F.mutual_information_divergence(*gpu), ref_mid(*data)),
        (F.mutual_information(gpu[0], gpu[1]), F.mutual_information(data[0], data[1]).item()),
    ):
        assert got.device.type == "cuda" and got.dtype == torch.float64
        assert got.item() == pytest.approx(expected, rel=REL, abs=0.0)


def test_state_dict_and_move_between_devices(data):
    metric = _feed(MutualInformationDivergence(feature=(DX, DY)).to("cuda"), *data)
    expected = metric.compute().item()
    restored = MutualInformationDivergence(feature=(DX, DY)).to("cuda")
    restored.load_state_dict(
        {k: v.cpu() for k, v in metric.state_dict().items() if isinstance(v, torch.Tensor)}, strict=False
    )
    assert all(v.device.type == "cuda" for v in restored.metric_state.values())
    assert restored.compute().item() == pytest.approx(expected, rel=REL, abs=0.0)
    back = metric.to("cpu")
    assert all(v.device.type == "cpu" and v.dtype == torch.float64 for v in back.metric_state.values())
    assert back.compute().item() == pytest.approx(expected, rel=REL, abs=0.0)


def test_bad_input_on_cuda_leaves_state_unchanged(data):
    metric = _feed(MutualInformationDivergence(feature=(DX, DY)).to("cuda"), *data)
    before = {k: v.clone() for k, v in metric.metric_state.items()}
    bad = data[2][:4].clone().cuda()
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="`images` contains NaN"):
        metric.update(bad, data[3][:4].cuda(), real=False)
    for name, value in metric.metric_state.items():
        assert torch.equal(value, before[name]), name


# ------------------------------------------------------------------ host synchronisations of update / update_pairs
SYNC_BUFFER = 64


def _sync_warnings(fn):
    """Run ``fn`` under ``torch.cuda.set_sync_debug_mode("warn")``; return the synchronisation warnings it raised."""
    import warnings

    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # one warning per synchronising call, even from the same line
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return [w for w in caught if "called a synchronizing" in str(w.message)]


def _without_syncs(fn):
    """Run ``fn`` under ``torch.cuda.set_sync_debug_mode("error")``: any synchronisation raises RuntimeError."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _sync_data(rows):
    x, y = well_conditioned_pairs(rows, DX, DY, seed=0)
    x0, _ = well_conditioned_pairs(rows, DX, DY, seed=1, strength=0.3)
    return [t.float().cuda() for t in (x, y, x0)], (x.float(), y.float(), x0.float())


def _sync_calls(metric, kind, gpu, rows):
    """The calls under test: a run of batches that stages, fills and flushes the buffer (or bypasses it)."""
    x, y, x0 = gpu
    calls = []
    for start in range(0, x.shape[0], rows):
        s = slice(start, start + rows)
        if kind == "update_pairs":
            calls.append(lambda s=s: metric.update_pairs(x[s], y[s], x0[s]))
        else:
            calls.append(lambda s=s: metric.update(x[s], y[s], real=True))
            calls.append(lambda s=s: metric.update(x0[s], y[s], real=False))
    return calls


def _fresh_after_warm_up(kind, gpu, rows, validate_args):
    """A new metric on CUDA, after a first one ran the same calls: the CUDA context, kernels and cuBLAS handle are
    then made outside the checked region."""

    def build():
        return MutualInformationDivergence((DX, DY), validate_args=validate_args, buffer_rows=SYNC_BUFFER).to("cuda")

    for call in _sync_calls(build(), kind, gpu, rows):
        call()
    return build()


def test_sync_counter_sees_a_synchronisation():
    # The counting below means something only if the debug mode reports a known synchronisation.
    value = torch.ones(3, device="cuda").sum()
    assert len(_sync_warnings(lambda: value.item())) == 1
    with pytest.raises(RuntimeError, match="synchroniz"):
        _without_syncs(lambda: value.item())


@pytest.mark.parametrize("kind", ["update", "update_pairs"])
@pytest.mark.parametrize("rows", [8, SYNC_BUFFER + 36], ids=["below_buffer", "above_buffer"])
def test_update_without_validation_does_not_synchronise(kind, rows):
    gpu, cpu = _sync_data(3 * SYNC_BUFFER + 20)
    metric = _fresh_after_warm_up(kind, gpu, rows, validate_args=False)
    for call in _sync_calls(metric, kind, gpu, rows):
        _without_syncs(call)  # raises RuntimeError on any synchronisation
    assert metric._staged["reference"] is None or metric._staged["reference"].device.type == "cuda"
    assert metric.compute().item() == pytest.approx(ref_mid(cpu[0], cpu[1], cpu[2], cpu[1]), rel=REL, abs=0.0)


@pytest.mark.parametrize("kind", ["update", "update_pairs"])
@pytest.mark.parametrize("rows", [8, SYNC_BUFFER + 36], ids=["below_buffer", "above_buffer"])
def test_update_with_validation_synchronises_at_most_once(kind, rows):
    gpu, cpu = _sync_data(3 * SYNC_BUFFER + 20)
    metric = _fresh_after_warm_up(kind, gpu, rows, validate_args=True)
    counts = [len(_sync_warnings(call)) for call in _sync_calls(metric, kind, gpu, rows)]
    assert all(count <= 1 for count in counts), counts
    assert metric.compute().item() == pytest.approx(ref_mid(cpu[0], cpu[1], cpu[2], cpu[1]), rel=REL, abs=0.0)
