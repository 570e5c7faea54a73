"""How the library's errors read on the command line: its argument names become the options that set them.

The library's messages name Python arguments in backquotes (``eps``, ``jackknife_key='image'``,
``bias_correction=True``). On the command line each becomes the option that sets it (``--eps``, ``--jackknife-key
image``, ``--bias-correction gaussian``), and a run whose estimator is bias-corrected, which needs ``--eps 0``, is
never advised to set ``eps``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from mid_metric.cli.parser import CommandError

__all__ = ["cli_wording", "library_errors"]

#: Library spellings and the options that set them, in the order they are replaced.
_OPTIONS = (
    (re.compile(r"`jackknife_key='(\w+)'`(?: \(the `key` of row_groups\))?"), r"--jackknife-key \1"),
    (re.compile(r"`(?:num_groups|jackknife_groups)`"), "--jackknife-groups"),
    (re.compile(r"`bias_correction=True`"), "--bias-correction gaussian"),
    (re.compile(r"`bias_correction='jackknife'`"), "--bias-correction jackknife"),
    (re.compile(r"`eps` > 0 \(e\.g\. eps=([^)\s]+)\)"), r"--eps > 0 (e.g. --eps \1)"),
    (re.compile(r"`eps=([^`]+)`"), r"--eps \1"),
    (re.compile(r"\beps=(?=\S)"), "--eps "),
    (re.compile(r"`eps`"), "--eps"),
)

#: The library's advice to regularise with ``eps``, and what is left of its sentence without it.
_EPS_ADVICE = (
    (re.compile(r",? or set `eps` > 0 \(e\.g\. eps=[^)]*\) to regularise the covariances"), ""),
    (re.compile(r"Set `eps` > 0 or check"), "Check"),
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(])")


def cli_wording(message: str, eps_allowed: bool = True) -> str:
    """Return a library error ``message`` with its argument names replaced by the options that set them.

    Args:
        message: The library's message.
        eps_allowed: Whether the run may set ``--eps``; when ``False`` (a bias-corrected estimator, which needs
            ``--eps 0``), advice to set it is left out, and so is any other sentence that names it.

    Example:
        >>> cli_wording("Pass more reference pairs, fewer `num_groups`, or use `bias_correction=True`.")
        'Pass more reference pairs, fewer --jackknife-groups, or use --bias-correction gaussian.'
        >>> text = "Too few; pass more reference pairs or set `eps` > 0 (e.g. eps=5e-4) to regularise the covariances."
        >>> cli_wording(text)
        'Too few; pass more reference pairs or set --eps > 0 (e.g. --eps 5e-4) to regularise the covariances.'
        >>> cli_wording(text, eps_allowed=False)
        'Too few; pass more reference pairs.'
    """
    if not eps_allowed:
        for pattern, replacement in _EPS_ADVICE:
            message = pattern.sub(replacement, message)
        sentences = [part for part in _SENTENCE_END.split(message) if not re.search(r"\beps\b", part)]
        message = " ".join(sentences) or message  # a message about eps itself stays
    for pattern, replacement in _OPTIONS:
        message = pattern.sub(replacement, message)
    return message


@contextlib.contextmanager
def library_errors(eps_allowed: bool = True, prefix: str = "") -> Iterator[None]:
    """Turn the library's ``ValueError`` in the block into a :class:`CommandError` in command-line words.

    Args:
        eps_allowed: As in :func:`cli_wording`.
        prefix: Put before the message (e.g. the file the error is about, with ``": "``).
    """
    try:
        yield
    except CommandError:
        raise
    except ValueError as error:
        raise CommandError(prefix + cli_wording(" ".join(str(error).split()), eps_allowed)) from None
