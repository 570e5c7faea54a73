"""Helpers that run the `mid-metric` command line in-process and check its output or its one-line error."""

from __future__ import annotations

from mid_metric import cli


def run_cli(args: list[str], capsys) -> str:
    """Run `mid-metric ARGS`, check that it succeeds, and return what it printed on stdout."""
    assert cli.main(args) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def fail_cli(args: list[str], capsys, *words: str) -> str:
    """Run `mid-metric ARGS`, check that it exits 1 with one `mid-metric: error:` line holding ``words``; return it."""
    status = cli.main(args)
    err = capsys.readouterr().err
    assert status == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mid-metric: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]
