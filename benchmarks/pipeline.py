"""Images per second of the command line's image pipeline, against a plain DataLoader and 0.3.1's, in one run.

    python benchmarks/pipeline.py                     # 2,000 JPEGs, 3 interleaved repeats, a cheap CLIP
    python benchmarks/pipeline.py --quick             # 400 JPEGs, 2 repeats
    python benchmarks/pipeline.py --device cuda --real-size   # a ViT-L/14-sized CLIP (random weights) in float16

The images are JPEG files of the sizes of COCO and Flickr8K photos (500 x 375 and 375 x 500, smooth colour fields
with texture and noise, quality 90), listed in a pairs file. The model is a CLIP with the input size of OpenAI's
(224) and a tiny transformer (hidden size 32, patches of 32), so that decoding and preprocessing dominate, as they
do on a GPU with a real model; the main process runs it on one torch thread (``--threads``), on which it costs
0.3 ms an image, where thread waits on two busy cores cost it 6 ms. ``--real-size`` builds a model of ViT-L/14's
sizes instead (random weights: the compute is the same), run on torch's default threads. Each configuration
encodes every image of the pairs file:

- **cli**: what ``score`` and ``reference`` run (:func:`mid_metric.cli.encoding.encode_images`): workers decode and
  preprocess, the main process runs the model;
- **baseline**: a plain ``DataLoader`` whose dataset opens an image, converts it to RGB and preprocesses it, with
  the default collate function, and the same model call;
- **0.3.1**: decoding in the workers and the preprocessing in the main process, as 0.3.1's command line did (the
  processor handed float images, ``do_rescale=False``; OpenAI's and the text-to-image steps on all of torch's
  threads), for the choices 0.3.1 had.

Each is timed for every ``--preprocess`` choice, at 0, 1 and 2 workers and at the automatic default (the usable
cores less one, at most 8), worker start-up included. The configurations take turns in an order that rotates with
each repeat, so that all see the same load, and the figures are medians. The features of the cli configurations are
checked to be bit-identical across worker counts. Next to images per second, the table gives the CPU time per image
of the main process and its workers together (median, ms), which other processes on a busy machine inflate far less
than the wall clock.
"""

from __future__ import annotations

import argparse
import csv
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "tests"))

from common import add_results_flag, cpu_model, markdown_table, rotated, utc_now, write_block  # noqa: E402

from mid_metric import __version__  # noqa: E402
from mid_metric.cli.encoding import encode_images  # noqa: E402
from mid_metric.cli.values import automatic_workers, usable_cores  # noqa: E402
from mid_metric.features.inputs import images_to_float_list  # noqa: E402
from mid_metric.features.preprocess import (  # noqa: E402
    CLIP_MEAN,
    CLIP_STD,
    PREPROCESSING,
    TEXT_TO_IMAGE_SIDE,
    _resize_and_crop,
    _to_unit_tensor,
    to_pil_images,
)
from mid_metric.io.pairs import read_pairs  # noqa: E402

#: Targets of issue 23: the cli path at equal workers against the baseline; 2 workers against 0.
BASELINE_TARGET = 0.95


# ---------------------------------------------------------------------------------------------------- data
def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the loader workers, joined when a pass ends)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def write_images(folder: Path, count: int) -> Path:
    """``count`` JPEG photos' worth of images (500 x 375 and 375 x 500) and ``pairs.csv`` listing them."""
    pairs = folder / "pairs.csv"
    if pairs.exists() and sum(1 for _ in open(pairs)) == count + 1:
        return pairs
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        width, height = (500, 375) if index % 2 == 0 else (375, 500)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        phases = rng.uniform(0, 2 * np.pi, size=(3, 2))
        scales = rng.uniform(20, 90, size=(3, 2))
        field = np.stack(
            [np.sin(xx / scales[c, 0] + phases[c, 0]) * np.cos(yy / scales[c, 1] + phases[c, 1]) for c in range(3)],
            axis=-1,
        )
        noise = rng.normal(0, 18, size=field.shape)
        pixels = np.clip(128 + 100 * field + noise, 0, 255).astype(np.uint8)
        name = f"images/{index:05d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=90)
        rows.append({"image": name, "caption": f"a photo of thing {index}"})
    with open(pairs, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return pairs


def build_model(folder: Path, real_size: bool) -> Path:
    """A CLIP of input size 224 saved with its processor: tiny towers, or ViT-L/14's sizes (random weights)."""
    from clip_fixtures import write_byte_level_vocab
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    if (folder / "config.json").exists():
        return folder
    if real_size:
        vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16}
        text = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
        vision_config, projection = dict(vision, image_size=224, patch_size=14), 768
    else:
        text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
        vision_config, projection = dict(text, image_size=224, patch_size=32), 16
    text_config = dict(text, vocab_size=514, max_position_embeddings=77, bos_token_id=512, eos_token_id=513)
    config = CLIPConfig(text_config=dict(text_config, pad_token_id=513), vision_config=vision_config)
    config.projection_dim = projection
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(folder)
    with tempfile.TemporaryDirectory() as vocab:
        tokenizer = CLIPTokenizer.from_pretrained(write_byte_level_vocab(vocab))
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------ the three paths
class _Quiet:
    def progress(self, total: int, description: str) -> Any:
        return self

    def update(self, count: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def run_cli(table: Any, extractor: Any, workers: int, device: str, batch: int) -> torch.Tensor:
    """What ``score`` runs on the images: :func:`mid_metric.cli.encoding.encode_images`."""
    args = argparse.Namespace(num_workers=workers, batch_size=batch, device=device)
    return encode_images(table, extractor, args, _Quiet())


class _PlainImages(torch.utils.data.Dataset):
    """A plain dataset: open, convert to RGB, preprocess one image (the baseline); or only open (0.3.1)."""

    def __init__(self, paths: list[Path], transform: Callable[[Any], Any], convert: bool = True) -> None:
        self.paths, self.transform, self.convert = paths, transform, convert

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            image.load()
            return self.transform(image.convert("RGB") if self.convert else image.copy())


def _one_item(pipeline: Any) -> Callable[[Any], torch.Tensor]:
    return lambda image: pipeline([image])[0]


def run_baseline(paths: list[Path], extractor: Any, workers: int, device: str, batch: int) -> torch.Tensor:
    """A plain DataLoader that preprocesses each image in its workers; the default collate; the same model call."""
    loader = torch.utils.data.DataLoader(
        _PlainImages(paths, _one_item(extractor.pipeline)),
        batch_size=batch,
        num_workers=workers,
        pin_memory=torch.device(device).type == "cuda",
    )
    return torch.cat([extractor.encode_pixels(pixels) for pixels in loader]).float().cpu()


def run_031(paths: list[Path], extractor: Any, workers: int, device: str, batch: int) -> torch.Tensor:
    """0.3.1's command line: the workers decode, the main process preprocesses (the processor gets floats)."""
    loader = torch.utils.data.DataLoader(
        _PlainImages(paths, lambda image: image, convert=False),
        batch_size=batch,
        num_workers=workers,
        collate_fn=lambda items: items,
    )
    chunks = []
    for images in loader:
        if extractor.preprocess == "processor":
            floats = images_to_float_list(images)
            pixels = extractor.processor.image_processor(images=floats, do_rescale=False, return_tensors="pt")
            pixels = pixels["pixel_values"]
        else:  # 0.3.1's code: the same steps on the process's torch threads (the package runs them on one)
            pixels = OLD_BATCHES[extractor.preprocess](to_pil_images(images), extractor.image_size)
        chunks.append(extractor.encode_pixels(pixels).float().cpu())
    return torch.cat(chunks)


def _normalise_031(batch: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    return (batch - mean) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def _openai_031(pictures: list[Any], size: int) -> torch.Tensor:
    """0.3.1's ``openai_pixels``: the same values, the batch stacked then normalised, on all of torch's threads."""
    from PIL import Image

    return _normalise_031(torch.stack([_to_unit_tensor(_resize_and_crop(p, size, Image.BICUBIC)) for p in pictures]))


def _text_to_image_031(pictures: list[Any], size: int) -> torch.Tensor:
    """0.3.1's ``text_to_image_pixels``, likewise."""
    from PIL import Image

    side = TEXT_TO_IMAGE_SIDE
    batch = torch.stack([_to_unit_tensor(_resize_and_crop(p, side, Image.BILINEAR)) for p in pictures])
    batch = torch.nn.functional.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
    return _normalise_031(batch)


#: The preprocessing of 0.3.1 for the choices it had, as it ran.
OLD_BATCHES = {"openai": _openai_031, "mid-t2i": _text_to_image_031}


# ------------------------------------------------------------------------------------------------- the run
def main() -> None:
    """Time every configuration in turns; print and write the tables and verdicts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEG images in the pairs file")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every configuration")
    parser.add_argument("--quick", action="store_true", help="400 images, 2 repeats")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (the CLI's default)")
    parser.add_argument("--device", default="cpu", help="device of the model")
    parser.add_argument("--real-size", action="store_true", help="a ViT-L/14-sized model (float16 on CUDA)")
    parser.add_argument("--data", type=Path, default=None, help="folder for the images and the model (kept)")
    parser.add_argument("--preprocess", nargs="+", default=list(PREPROCESSING), choices=PREPROCESSING)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the main process (default: 1, or torch's own with --real-size)",
    )
    parser.add_argument("--workers", nargs="+", type=int, default=None, help="worker counts (default: 0 1 2 auto)")
    add_results_flag(parser)
    options = parser.parse_args()
    threads = options.threads or (torch.get_num_threads() if options.real_size else 1)
    torch.set_num_threads(threads)
    if options.quick:
        options.images, options.repeats = 400, 2
    data = options.data or Path(tempfile.mkdtemp(prefix="mid-pipeline-"))
    data.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pairs = write_images(data / f"photos-{options.images}", options.images)
    model = build_model(data / ("clip-l14-random" if options.real_size else "clip-tiny-224"), options.real_size)
    print(f"data ready in {time.perf_counter() - started:.1f} s: {pairs}", flush=True)

    from mid_metric.features import load_clip

    dtype = torch.float16 if options.real_size and options.device.startswith("cuda") else None
    table = read_pairs(str(pairs), "image", "caption")
    paths = [pair.image_path for pair in table.pairs]
    auto = automatic_workers(usable_cores())
    worker_counts = sorted(set(options.workers or {0, 1, 2, auto}))
    extractors = {
        choice: load_clip(
            str(model), device=options.device, dtype=dtype, batch_size=options.batch_size, preprocess=choice
        )
        for choice in options.preprocess
    }
    runners = {"cli": run_cli, "baseline": run_baseline, "0.3.1": run_031}
    configurations = [
        (path, choice, workers)
        for choice in options.preprocess
        for workers in worker_counts
        for path in runners
        if not (path == "0.3.1" and (workers not in (0, 2) or choice not in ("processor", *OLD_BATCHES)))
    ]
    seconds: dict[tuple[str, str, int], list[float]] = {key: [] for key in configurations}
    cpu: dict[tuple[str, str, int], list[float]] = {key: [] for key in configurations}
    features: dict[tuple[str, int], torch.Tensor] = {}
    for repeat in range(options.repeats):
        for path, choice, workers in rotated(configurations, repeat * 7):
            source = table if path == "cli" else paths
            begin, begin_cpu = time.perf_counter(), cpu_seconds()
            out = runners[path](source, extractors[choice], workers, options.device, options.batch_size)
            if options.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[(path, choice, workers)].append(time.perf_counter() - begin)
            cpu[(path, choice, workers)].append(cpu_seconds() - begin_cpu)
            if path == "cli":
                features[(choice, workers)] = out
        print(f"repeat {repeat + 1}/{options.repeats} done", flush=True)

    rate = {key: options.images / statistics.median(values) for key, values in seconds.items()}
    cpu_ms = {key: 1000 * statistics.median(values) / options.images for key, values in cpu.items()}
    rows = []
    for choice in options.preprocess:
        for workers in worker_counts:
            cli, base, old = (("cli", choice, workers), ("baseline", choice, workers), ("0.3.1", choice, workers))
            label = f"{workers} (auto)" if workers == auto else str(workers)
            rows.append(
                [choice, label, f"{rate[cli]:.0f}", f"{rate[base]:.0f}", f"{rate[cli] / rate[base]:.2f}"]
                + [f"{cpu_ms[cli]:.2f}", f"{cpu_ms[base]:.2f}", f"{cpu_ms[base] / cpu_ms[cli]:.2f}"]
                + (
                    [f"{rate[old]:.0f}", f"{rate[cli] / rate[old]:.2f}", f"{cpu_ms[old] / cpu_ms[cli]:.2f}"]
                    if old in rate
                    else [""] * 3
                )
            )
    header = ["--preprocess", "workers", "cli img/s", "baseline img/s", "cli / baseline", "cli CPU ms/img"]
    header += ["baseline CPU ms/img", "baseline / cli CPU", "0.3.1 img/s", "cli / 0.3.1", "0.3.1 / cli CPU"]
    model_name = "ViT-L/14-sized CLIP (random weights)" if options.real_size else "tiny CLIP (input 224)"
    device = options.device if not options.device.startswith("cuda") else torch.cuda.get_device_name()
    lines = [
        "## Image pipeline of `score` and `reference` (benchmarks/pipeline.py)",
        "",
        f"{options.images} JPEG images (500 x 375 and 375 x 500), batch {options.batch_size}, {model_name}"
        f" {'in ' + str(dtype).replace('torch.', '') if dtype else 'in float32'} on {device}; {usable_cores()}"
        f" usable cores ({cpu_model()}), {threads} torch thread(s) in the main process, automatic workers {auto};"
        f" median of {options.repeats} interleaved repeats; mid-metric {__version__}, {utc_now()} UTC.",
        "",
        *markdown_table(header, rows),
        "",
    ]
    verdicts = []
    for choice in options.preprocess:
        for workers in worker_counts:
            ratio = rate[("cli", choice, workers)] / rate[("baseline", choice, workers)]
            verdicts.append((f"{choice}, {workers} workers: cli >= {BASELINE_TARGET} x baseline", ratio, ratio >= 0.95))
        if {0, 2} <= set(worker_counts):
            two = rate[("cli", choice, 2)] / rate[("cli", choice, 0)]
            verdicts.append((f"{choice}: cli at 2 workers faster than at 0", two, two > 1.0))
        first = features[(choice, worker_counts[0])]
        same = all(torch.equal(first, features[(choice, w)]) for w in worker_counts)
        verdicts.append((f"{choice}: features bit-identical at {worker_counts} workers", float(same), same))
    if "processor" in options.preprocess and "openai" in options.preprocess and auto in worker_counts:
        ratio = rate[("cli", "processor", auto)] / rate[("cli", "openai", auto)]
        verdicts.append(
            ("processor against openai at the automatic workers (not 5x slower: > 0.2)", ratio, ratio > 0.2)
        )
    for target, value, passed in verdicts:
        line = f"[{'PASS' if passed else 'FAIL'}] {target}: {value:.2f}"
        print(line, flush=True)
        lines.append(f"- {line}")
    body = "\n".join(lines)
    print("\n" + body, flush=True)
    write_block(options.results, body, "pipeline")


if __name__ == "__main__":
    main()
