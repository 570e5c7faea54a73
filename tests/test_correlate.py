"""``mid-metric correlate`` and the Kendall/bootstrap functions, against scipy on the same numbers.

Every expected tau is ``scipy.stats.kendalltau`` on scores and ratings that the test joins itself; the bootstrap
is checked for reproducibility under a seed and for containing tau.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from _cli import fail_cli as fail
from _cli import run_cli
from safetensors.torch import save_file

from mid_metric import cli
from mid_metric.functional.correlation import bootstrap_kendall_tau, correlate, kendall_tau

scipy_stats = pytest.importorskip("scipy.stats")

N = 40


def correlate_args(scores, judgments, *extra):
    """`correlate SCORES JUDGMENTS` on the key `key`, the score column `pmi` and the rating column `rating`."""
    return [
        "correlate",
        str(scores),
        str(judgments),
        "--key",
        "key",
        "--score-column",
        "pmi",
        "--rating-column",
        "rating",
        *extra,
    ]


def write_csv(path: Path, columns: list[str], rows: list[list], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


@pytest.fixture()
def tables(tmp_path):
    """Scores for keys k0..k39 (two metrics) and ratings: TSV with two ratings per key, CSV and JSONL with one."""
    rng = np.random.default_rng(7)
    quality = rng.normal(size=N)
    pmi = quality + rng.normal(scale=0.8, size=N)
    clip = quality + rng.normal(scale=1.5, size=N)
    ratings = np.clip(np.round(2.5 + quality + rng.normal(scale=0.5, size=N)), 1, 4)
    second = np.clip(ratings + rng.integers(-1, 2, size=N), 1, 4)
    keys = [f"k{i}" for i in range(N)]
    scores = write_csv(
        tmp_path / "scores.csv",
        ["row", "key", "pmi", "clip_score"],
        [[i + 1, k, repr(float(p)), repr(float(c))] for i, (k, p, c) in enumerate(zip(keys, pmi, clip))],
    )
    order = rng.permutation(N)  # judgments in another order than the scores
    tsv = write_csv(
        tmp_path / "judgments.tsv",
        ["key", "rating"],
        [[keys[i], ratings[i]] for i in order] + [[keys[i], second[i]] for i in order],
        delimiter="\t",
    )
    with open(tmp_path / "judgments.jsonl", "w", encoding="utf-8") as handle:
        for i in order:
            handle.write(json.dumps({"key": keys[i], "rating": float(ratings[i])}) + "\n")
    single = write_csv(tmp_path / "judgments.csv", ["key", "rating"], [[keys[i], ratings[i]] for i in order])
    return {
        "scores": scores,
        "tsv": tsv,
        "jsonl": tmp_path / "judgments.jsonl",
        "csv": single,
        "pmi": pmi,
        "clip": clip,
        "ratings": ratings,
        "second": second,
        "order": order,
    }


def run_json(args: list[str], capsys) -> dict:
    return json.loads(run_cli(args, capsys))


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("variant", ["b", "c"])
def test_tau_equals_scipy_on_the_joined_rows(tables, capsys, kind, variant):
    report = run_json(
        correlate_args(
            tables["scores"], tables[kind], "--variant", variant, "--json", "--bootstrap", "300", "--seed", "3"
        ),
        capsys,
    )
    order = tables["order"]
    expected = scipy_stats.kendalltau(tables["pmi"][order], tables["ratings"][order], variant=variant)
    assert report["tau"] == pytest.approx(expected.statistic, abs=1e-12)
    assert report["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert report["n"] == N and report["variant"] == variant and report["score_column"] == "pmi"
    assert report["ci_low"] <= report["tau"] <= report["ci_high"]
    assert report["bootstrap"] == {"resamples": 300, "seed": 3, "level": 0.95, "unit": "key (key)"}


def test_repeated_keys_count_every_rating_and_several_columns_give_a_table(tables, capsys):
    args = ["correlate", str(tables["scores"]), str(tables["tsv"]), "--key", "key", "--rating-column", "rating"]
    args += ["--score-column", "pmi", "--score-column", "clip_score", "--bootstrap", "200"]
    report = run_json([*args, "--json"], capsys)
    order = tables["order"]
    ratings = np.concatenate([tables["ratings"][order], tables["second"][order]])
    for column, values in (("pmi", tables["pmi"]), ("clip_score", tables["clip"])):
        expected = scipy_stats.kendalltau(np.concatenate([values[order]] * 2), ratings, variant="b")
        entry = report["columns"][column]
        assert set(entry) == {"tau", "p_value", "n", "ci_low", "ci_high"}
        assert entry["tau"] == pytest.approx(expected.statistic, abs=1e-12) and entry["n"] == 2 * N
    assert report["num_keys"] == N and "tau" not in report  # several columns: per column only
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "Kendall tau-b of 80 judgments (40 keys)" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(("pmi ", "clip_score "))]
    assert [row[0] for row in rows] == ["pmi", "clip_score"]
    assert float(rows[0][1]) == pytest.approx(report["columns"]["pmi"]["tau"], abs=1e-4)


def test_bootstrap_is_seeded_and_draws_keys_with_all_their_ratings(tables):
    scores, ratings = tables["pmi"], tables["ratings"]
    first = bootstrap_kendall_tau(scores, ratings, "b", 400, seed=11)
    assert first == bootstrap_kendall_tau(scores, ratings, "b", 400, seed=11)
    assert first != bootstrap_kendall_tau(scores, ratings, "b", 400, seed=12)
    tau, _ = kendall_tau(scores, ratings, "b")
    assert first[0] < tau < first[1]
    # Groups: each item twice (two ratings); drawing whole groups is not the same as drawing rows.
    doubled, both = np.concatenate([scores, scores]), np.concatenate([ratings, tables["second"]])
    groups = list(range(N)) * 2
    grouped = bootstrap_kendall_tau(doubled, both, "b", 400, seed=11, groups=groups)
    assert grouped != bootstrap_kendall_tau(doubled, both, "b", 400, seed=11)
    # An independent grouped bootstrap with the same generator and draws gives the same interval.
    rng = np.random.default_rng(11)
    values = []
    for _ in range(400):
        chosen = rng.integers(0, N, size=N)
        rows = np.concatenate([[g, g + N] for g in chosen])
        values.append(scipy_stats.kendalltau(doubled[rows], both[rows], variant="b").statistic)
    assert grouped == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), abs=1e-12)
    result = correlate(scores, ratings, "c", resamples=0)
    assert (
        result.ci_low is None
        and result.ci_high is None
        and result.tau == pytest.approx(scipy_stats.kendalltau(scores, ratings, variant="c").statistic)
    )


def test_missing_rows_are_an_error_unless_allowed(tables, tmp_path, capsys):
    keys = [f"k{i}" for i in range(N)] + ["extra1", "extra2"]
    judgments = write_csv(tmp_path / "more.csv", ["key", "rating"], [[k, 1 + i % 4] for i, k in enumerate(keys)])
    scores_rows = [[f"k{i}", repr(float(v))] for i, v in enumerate(tables["pmi"][:-3])]  # k37..k39 unscored
    scores = write_csv(tmp_path / "fewer.csv", ["key", "pmi"], scores_rows + [["lonely", "0.5"]])
    common = ["correlate", str(scores), str(judgments), "--key", "key", "--score-column", "pmi", "--rating-column"]
    message = fail(
        [*common, "rating", "--bootstrap", "0"],
        capsys,
        "5 row(s) of",
        "(first keys: 'k37', 'k38', 'k39',",
        "'extra1'",
        "1 row(s) of",
        "'lonely'",
        "--allow-missing",
    )
    assert str(judgments) in message and str(scores) in message
    report = run_json([*common, "rating", "--allow-missing", "--json", "--bootstrap", "0"], capsys)
    assert report["n"] == N - 3 and report["missing_scores"] == 5 and report["missing_judgments"] == 1
    expected = scipy_stats.kendalltau(tables["pmi"][:-3], [1 + i % 4 for i in range(N - 3)], variant="b")
    assert report["tau"] == pytest.approx(expected.statistic, abs=1e-12)
    assert report["ci_low"] is None and report["ci_high"] is None


def test_nan_and_empty_ratings_are_skipped(tables, tmp_path, capsys):
    rows = [[f"k{i}", "" if i == 3 else ("NaN" if i == 5 else 1 + i % 4)] for i in range(N)]
    judgments = write_csv(tmp_path / "gaps.csv", ["key", "rating"], rows)
    report = run_json(
        correlate_args(tables["scores"], judgments, "--json", "--bootstrap", "0"),
        capsys,
    )
    kept = [i for i in range(N) if i not in (3, 5)]
    expected = scipy_stats.kendalltau(tables["pmi"][kept], [1 + i % 4 for i in kept], variant="b")
    assert report["skipped_nan_ratings"] == 2 and report["n"] == N - 2
    assert report["tau"] == pytest.approx(expected.statistic, abs=1e-12)


def test_the_per_sample_csv_of_score_is_read_by_row(tmp_path, capsys):
    rng = np.random.default_rng(0)
    import torch

    x = torch.from_numpy(rng.normal(size=(30, 3)))
    y = x + torch.from_numpy(rng.normal(scale=0.7, size=(30, 3)))
    save_file({"image_features": x, "text_features": y}, str(tmp_path / "real.safetensors"))
    save_file({"image_features": x[:12], "text_features": y[:12]}, str(tmp_path / "cand.safetensors"))
    per_sample = tmp_path / "per_sample.csv"
    assert (
        cli.main(
            [
                "score",
                str(tmp_path / "cand.safetensors"),
                "--reference-pairs",
                str(tmp_path / "real.safetensors"),
                "--per-sample",
                str(per_sample),
                "--metrics",
                "mid,clip-score",
                "-q",
            ]
        )
        == 0
    )
    capsys.readouterr()
    ratings = rng.integers(1, 5, size=12)
    with open(tmp_path / "ratings.jsonl", "w", encoding="utf-8") as handle:
        for row, rating in enumerate(ratings, start=1):
            handle.write(json.dumps({"row": row, "score": int(rating)}) + "\n")
    report = run_json(
        [
            "correlate",
            str(per_sample),
            str(tmp_path / "ratings.jsonl"),
            "--key",
            "row",
            "--score-column",
            "pmi",
            "--score-column",
            "clip_score",
            "--rating-column",
            "score",
            "--json",
            "--bootstrap",
            "100",
        ],
        capsys,
    )
    with open(per_sample, newline="", encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    for column in ("pmi", "clip_score"):
        values = [float(row[column]) for row in written]
        expected = scipy_stats.kendalltau(values, ratings, variant="b").statistic
        assert report["columns"][column]["tau"] == pytest.approx(expected, abs=1e-12)


def test_bad_tables_are_one_line_with_file_and_line(tables, tmp_path, capsys):
    base = ["correlate", str(tables["scores"]), str(tables["csv"]), "--score-column", "pmi", "--rating-column"]
    fail([*base, "rating", "--key", "id"], capsys, "no column 'id'", "--key", str(tables["scores"]))
    fail([*base, "stars", "--key", "key"], capsys, "no column 'stars'", "--rating-column")
    duplicated = write_csv(tmp_path / "dup.csv", ["key", "pmi"], [["a", "1"], ["b", "2"], ["a", "3"]])
    fail(
        correlate_args(duplicated, tables["csv"]),
        capsys,
        f"{duplicated}, line 4",
        "'a' appears again (first on line 2)",
    )
    text = write_csv(tmp_path / "text.csv", ["key", "pmi"], [["a", "1"], ["b", "high"]])
    fail(
        correlate_args(text, tables["csv"]),
        capsys,
        f"{text}, line 3",
        "not a number: 'high'",
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"key": "k0", "rating": 1}\n{"key": "k1", "rating":\n', encoding="utf-8")
    fail([*base[:2], str(broken), *base[3:], "rating", "--key", "key"], capsys, f"{broken}, line 2", "not valid JSON")
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("key\trating\nk0\t1\nk1\t2\t7\n", encoding="utf-8")
    fail([*base[:2], str(ragged), *base[3:], "rating", "--key", "key"], capsys, f"{ragged}, line 3", "3 cells")
    fail([*base[:2], str(tmp_path / "nothing.csv"), *base[3:], "rating", "--key", "key"], capsys, "does not exist")
    fail([*base[:2], str(tmp_path), *base[3:], "rating", "--key", "key"], capsys, "is a folder")
    (tmp_path / "ratings.xlsx").write_text("x", encoding="utf-8")
    fail([*base[:2], str(tmp_path / "ratings.xlsx"), *base[3:], "rating", "--key", "key"], capsys, "'.xlsx'")


def test_a_repeated_column_or_json_key_is_an_error_where_the_last_one_would_give_the_opposite_tau(tmp_path, capsys):
    keys = [f"k{i}" for i in range(12)]
    judgments = write_csv(tmp_path / "ratings.csv", ["key", "rating"], [[k, i] for i, k in enumerate(keys)])
    intended = write_csv(tmp_path / "intended.csv", ["key", "pmi"], [[k, i] for i, k in enumerate(keys)])
    # The intended column ranks the keys as the ratings do: tau = +1 by definition.
    assert run_json(correlate_args(intended, judgments, "--json", "--bootstrap", "0"), capsys)["tau"] == pytest.approx(
        1.0, abs=1e-12
    )
    # A second 'pmi' column, reversed, would give tau = -1 if it silently replaced the first.
    repeated = write_csv(tmp_path / "repeated.csv", ["key", "pmi", "pmi"], [[k, i, -i] for i, k in enumerate(keys)])
    fail(correlate_args(repeated, judgments), capsys, f"{repeated}, line 1", "column 'pmi' is named twice")
    tabs = write_csv(
        tmp_path / "repeated.tsv", ["key", "rating", "rating"], [[k, i, -i] for i, k in enumerate(keys)], "\t"
    )
    fail(correlate_args(intended, tabs), capsys, f"{tabs}, line 1", "column 'rating' is named twice")
    twice = tmp_path / "twice.jsonl"
    twice.write_text("".join(f'{{"key": "{k}", "rating": {i}, "rating": {-i}}}\n' for i, k in enumerate(keys)))
    fail(correlate_args(intended, twice), capsys, f"{twice}, line 1", "key 'rating' appears twice in one JSON object")


def test_every_table_follows_the_cell_and_quote_rules(tables, tmp_path, capsys):
    keys = [f"k{i}" for i in range(N)]
    # A TSV comment that starts with a quote is text: every row counts (it used to swallow the rows after it).
    rows = [[k, tables["ratings"][i], '"great' if i == 0 else "ok"] for i, k in enumerate(keys)]
    tsv = tmp_path / "commented.tsv"
    tsv.write_text("key\trating\tcomment\n" + "".join("\t".join(map(str, row)) + "\n" for row in rows))
    report = run_json(correlate_args(tables["scores"], tsv, "--json", "--bootstrap", "0"), capsys)
    expected = scipy_stats.kendalltau(tables["pmi"], tables["ratings"], variant="b")
    assert report["n"] == N and report["tau"] == pytest.approx(expected.statistic, abs=1e-12)
    # An unquoted comma in a caption of a scores table, and an unbalanced quote in judgments, name their line.
    comma = tmp_path / "captioned.csv"
    comma.write_text("row,key,caption,pmi\n1,k0,a dog,0.5\n2,k1,A man, riding a horse,0.25\n")
    fail(correlate_args(comma, tables["csv"]), capsys, f"{comma}, line 3", "5 cells, but the header has 4 columns")
    quote = tmp_path / "quote.csv"
    quote.write_text('key,rating\nk0,1\n"k1,2\nk2,3\n')
    fail(correlate_args(tables["scores"], quote), capsys, f"{quote}, line 3", "unbalanced quote")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("key,rating\nk0,1\nk\xe9,2\n".encode("latin-1"))
    fail(correlate_args(tables["scores"], latin), capsys, f"{latin}, line 3", "0xe9 is not UTF-8")


def test_missing_scipy_is_one_line_with_the_install_hint(tables, capsys, monkeypatch):
    for name in [n for n in sys.modules if n == "scipy" or n.startswith("scipy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "scipy", None)  # `import scipy.stats` now raises ImportError
    fail(
        correlate_args(tables["scores"], tables["csv"]),
        capsys,
        "needs scipy",
        "pip install scipy",
    )


def test_the_package_imports_scipy_only_inside_functions():
    import ast

    package = Path(__file__).resolve().parent.parent / "mid_metric"
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[0] == "scipy"], path
