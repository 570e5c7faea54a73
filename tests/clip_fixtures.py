"""Build a tiny, randomly initialised CLIP model with a real tokenizer and processor, fully offline.

No weights can be downloaded in the tests, so :func:`build_tiny_clip` writes a complete Hugging Face model folder
(``config.json``, weights, tokenizer and image-processor files) with ``save_pretrained``. Tests then load it by path,
through the same ``from_pretrained`` code that users take with ``"openai/clip-vit-base-patch32"``.

The tokenizer is a real ``CLIPTokenizer`` whose vocabulary holds only the byte level: the 256 byte symbols, each
also with the end-of-word suffix ``</w>``, then ``<|startoftext|>`` (id 512) and ``<|endoftext|>`` (id 513). Its
merges file holds only the version line, so every character is one token. As in OpenAI's vocabulary, the
end-of-text token has the largest id. ``model_max_length`` is left unset on purpose: such a tokenizer does not
truncate unless it is given ``max_length``, which is how the library must call it.

Usage from another test module (``tests/`` is on ``sys.path`` under pytest's default import mode)::

    from clip_fixtures import build_tiny_clip

    @pytest.fixture(scope="session")
    def tiny_clip_dir(tmp_path_factory):
        return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))

    metric = MutualInformationDivergence(feature=str(tiny_clip_dir), eps=1e-3)

Set ``HF_HUB_OFFLINE=1`` in such tests so that nothing ever tries the network.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Union

#: Context window (``text_config.max_position_embeddings``) of the tiny model: a caption of more than 14
#: characters plus the start and end tokens does not fit.
TINY_CONTEXT_LENGTH = 16
#: Image and text feature size (``projection_dim``) of the tiny model.
TINY_PROJECTION_DIM = 16
#: Side of the square images the tiny model sees after preprocessing.
TINY_IMAGE_SIZE = 32


def byte_symbols() -> list[str]:
    """Return the printable stand-in character of each byte 0..255, as byte-level BPE tokenizers use.

    Bytes that are printable and not whitespace stand for themselves; the others get the characters from U+0100
    upwards, in byte order.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols = []
    next_free = 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + next_free))
            next_free += 1
    return symbols


def write_byte_level_vocab(folder: Union[str, os.PathLike]) -> Path:
    """Write ``vocab.json`` (514 tokens) and ``merges.txt`` (version line only) into ``folder`` and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


def build_tiny_clip(path: Union[str, os.PathLike], seed: int = 0, context_length: int = TINY_CONTEXT_LENGTH) -> Path:
    """Save a tiny random ``CLIPModel`` with its ``CLIPProcessor`` to ``path`` and return ``path``.

    Sizes: hidden size 32, 2 layers and 2 heads in each tower, images of 32 x 32 pixels in patches of 8,
    ``projection_dim`` :data:`TINY_PROJECTION_DIM` and a context window of :data:`TINY_CONTEXT_LENGTH` tokens.
    Building and saving take well under a second on a CPU; ``seed`` fixes the random weights.

    Args:
        path: Folder to write into (created if missing).
        seed: Seed of the random weights.
        context_length: The context window in tokens (one per character with this vocabulary).

    Returns:
        ``path`` as a :class:`~pathlib.Path`, loadable with ``CLIPModel.from_pretrained(path)`` and
        ``CLIPProcessor.from_pretrained(path)`` (or ``mid_metric.features.load_clip(str(path))``).
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text_config = dict(
        tower,
        vocab_size=514,
        max_position_embeddings=context_length,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    vision_config = dict(tower, image_size=TINY_IMAGE_SIZE, patch_size=8, num_channels=3)
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=TINY_PROJECTION_DIM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    model.save_pretrained(path)

    with tempfile.TemporaryDirectory() as vocab_dir:
        tokenizer = CLIPTokenizer.from_pretrained(write_byte_level_vocab(vocab_dir))
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path
