"""One set of rules for every table reader: pairs files, score and judgment tables, the Flickr8K files.

Each rule is checked on every reader: ``read_pairs`` (pairs files) and ``read_table`` (per-sample scores and human
judgments). Expected rows are written out in the test, or produced by Python's ``csv`` writer, an independent
RFC 4180 implementation.
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from mid_metric.io.flickr8k import Flickr8kError, read_token_file
from mid_metric.io.judgments import JudgmentsError, read_table
from mid_metric.io.pairs import PairsError, read_pairs


def pairs_rows(path):
    return [(pair.image, pair.caption) for pair in read_pairs(path).pairs]


def table_rows(path):
    return [(record["image"], record["caption"]) for _, record in read_table(path).rows]


READERS = [pytest.param(pairs_rows, PairsError, id="pairs"), pytest.param(table_rows, JudgmentsError, id="table")]


def write(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def raises(reader, error, path, *words):
    with pytest.raises(error) as info:
        reader(path)
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, (word, message)
    return message


@pytest.mark.parametrize("reader, error", READERS)
def test_a_row_with_more_or_fewer_cells_than_the_header_names_the_file_and_line(tmp_path, reader, error):
    extra = write(tmp_path, "comma.csv", "image,caption\nb.png,A dog\na.png,A man, riding a horse\n")
    raises(reader, error, extra, "line 3", "3 cells", "header has 2 columns", "double quotes")
    missing = write(tmp_path, "short.csv", "image,caption\na.png\nb.png,A dog\n")
    raises(reader, error, missing, "line 2", "1 cell,")
    tabs = write(tmp_path, "extra.tsv", "image\tcaption\na.png\tA dog\tbarking\n")
    raises(reader, error, tabs, "line 2", "3 cells")


@pytest.mark.parametrize("reader, error", READERS)
def test_tsv_has_no_quoting_so_a_caption_may_start_with_a_quote(tmp_path, reader, error):
    path = write(tmp_path, "p.tsv", 'image\tcaption\na.png\t"Stop" says the sign\nb.png\tA dog\nc.png\t"\n')
    assert reader(path) == [("a.png", '"Stop" says the sign'), ("b.png", "A dog"), ("c.png", '"')]


@pytest.mark.parametrize("reader, error", READERS)
def test_an_unbalanced_csv_quote_is_an_error_naming_its_line_and_never_merges_rows(tmp_path, reader, error):
    at_end = write(tmp_path, "end.csv", 'image,caption\na.png,"A man riding\nb.png,A dog\nc.png,A cat\n')
    raises(reader, error, at_end, "line 2", "unbalanced quote", "never closed")
    closed_later = write(tmp_path, "later.csv", 'image,caption\na.png,"A man riding\nb.png,A dog\nc.png,"A cat"\n')
    raises(reader, error, closed_later, "line 2", "text after the closing quote", "closed on line 4")


@pytest.mark.parametrize("reader, error", READERS)
def test_a_quote_inside_an_unquoted_csv_field_or_after_a_closing_quote_is_an_error(tmp_path, reader, error):
    inside = write(tmp_path, "inside.csv", 'image,caption\na.png,A sign saying "stop"\n')
    raises(reader, error, inside, "line 2", "quote inside the unquoted field")
    after = write(tmp_path, "after.csv", 'image,caption\na.png,"A man" riding\n')
    raises(reader, error, after, "line 2", "text after the closing quote")
    spaced = write(tmp_path, "spaced.csv", 'image,caption\na.png, "A man, riding"\n')
    raises(reader, error, spaced, "line 2", "quote inside the unquoted field")


@pytest.mark.parametrize("reader, error", READERS)
def test_csv_quoting_reads_what_an_rfc_4180_writer_writes(tmp_path, reader, error):
    rows = [
        ("a.png", "A man, riding a horse"),
        ("b b.png", 'He said "hi", twice ""'),
        ("c.png", "Two\nlines, and\r\na third"),
        ("d.png", ""),
        ("e.png", '"'),
        ("f.png", " spaces kept "),
    ]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL)
    writer.writerow(["image", "caption"])
    writer.writerows(rows)
    written = buffer.getvalue()
    path = write(tmp_path, "rfc.csv", written)
    expected = [(image, caption.replace("\r\n", "\n")) for image, caption in rows]
    if reader is table_rows:
        assert reader(path) == expected
        # Records are numbered by the physical line they start on.
        starts = [2]
        for _, caption in rows[:-1]:
            starts.append(starts[-1] + 1 + caption.count("\n"))
        assert [line for line, _ in read_table(path).rows] == starts
    else:  # an empty caption is refused by the pairs reader, on the record's start line
        with pytest.raises(PairsError, match=r"line 7 \(row 4\): empty caption"):
            reader(path)
        del rows[3]
        writer_buffer = io.StringIO(newline="")
        csv.writer(writer_buffer).writerows([("image", "caption"), *rows])
        assert reader(write(tmp_path, "rfc2.csv", writer_buffer.getvalue())) == [
            (image, caption.replace("\r\n", "\n")) for image, caption in rows
        ]


@pytest.mark.parametrize("reader, error", READERS)
@pytest.mark.parametrize("separator", [",", "\t"])
def test_a_repeated_column_name_is_an_error(tmp_path, reader, error, separator):
    suffix = ".csv" if separator == "," else ".tsv"
    header = separator.join(["image", "caption", "caption"])
    path = write(tmp_path, f"dup{suffix}", f"{header}\na.png{separator}first{separator}second\n")
    raises(reader, error, path, "line 1", "column 'caption' is named twice", "columns 2 and 3")


@pytest.mark.parametrize("reader, error", READERS)
def test_a_repeated_key_in_one_json_object_is_an_error_at_any_depth(tmp_path, reader, error):
    top = write(
        tmp_path,
        "dup.jsonl",
        '{"image": "a.png", "caption": "first"}\n{"image": "b.png", "caption": "x", "caption": "y"}\n',
    )
    raises(reader, error, top, "line 2", "key 'caption' appears twice in one JSON object")
    nested = write(tmp_path, "nested.jsonl", '{"image": "a.png", "caption": "x", "meta": {"k": 1, "k": 2}}\n')
    raises(reader, error, nested, "line 1", "key 'k' appears twice")


@pytest.mark.parametrize("reader, error", READERS)
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
@pytest.mark.parametrize("line_end", ["\r\n", "\r"], ids=["crlf", "cr"])
def test_a_byte_order_mark_and_crlf_or_cr_line_ends_are_accepted(tmp_path, reader, error, suffix, line_end):
    rows = [("a.png", '"Quoted" caption'), ("b.png", "A dog")]
    if suffix == ".jsonl":
        lines = [json.dumps({"image": i, "caption": c}) for i, c in rows]
    else:
        separator = "," if suffix == ".csv" else "\t"
        quote = (lambda text: '"' + text.replace('"', '""') + '"') if suffix == ".csv" else (lambda text: text)
        lines = [f"image{separator}caption"] + [f"{i}{separator}{quote(c)}" for i, c in rows]
    path = write(tmp_path, f"bom{suffix}", b"\xef\xbb\xbf" + line_end.join(lines).encode("utf-8") + line_end.encode())
    assert reader(path) == rows


@pytest.mark.parametrize("reader, error", READERS)
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_bytes_that_are_not_utf8_are_an_error_naming_the_line(tmp_path, reader, error, suffix):
    if suffix == ".jsonl":
        lines = [
            '{"image": "a.png", "caption": "ok"}',
            '{"image": "b.png", "caption": "fine"}',
            '{"image": "c.png", "caption": "caf\xe9"}',
        ]
    else:
        separator = "," if suffix == ".csv" else "\t"
        lines = [f"image{separator}caption", f"a.png{separator}ok", f"b.png{separator}caf\xe9"]
        lines.insert(1, "")  # a blank line still counts
    path = write(tmp_path, f"latin1{suffix}", ("\n".join(lines) + "\n").encode("latin-1"))
    raises(reader, error, path, f"{path}, line {len(lines)}", "0xe9", "not UTF-8")


@pytest.mark.parametrize("reader, error", READERS)
def test_blank_lines_are_skipped_and_counted(tmp_path, reader, error):
    path = write(tmp_path, "blank.csv", "\nimage,caption\n\na.png,A dog\n\n\nb.png,A cat,extra\n")
    raises(reader, error, path, "line 7", "3 cells")


def test_pair_rows_count_data_rows_and_errors_give_the_line_too(tmp_path):
    path = write(tmp_path, "p.csv", 'image,caption\n\na.png,"Two\nlines"\nb.png,\n')
    with pytest.raises(PairsError, match=r"p\.csv, line 5 \(row 2\): empty caption"):
        read_pairs(path)


def test_a_symbolic_link_loop_is_reported_as_a_loop(tmp_path):
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop)
    with pytest.raises(PairsError, match="symbolic link loop"):
        read_pairs(loop)
    with pytest.raises(JudgmentsError, match="symbolic link loop"):
        read_table(loop)


def test_the_flickr8k_files_follow_the_same_text_rules(tmp_path):
    token = write(tmp_path, "Flickr8k.token.txt", b'\xef\xbb\xbfa.jpg#0\t"Quoted" dog .\r\na.jpg#1\tA cat .\r\n')
    captions, references = read_token_file(token)
    assert captions == {"a.jpg#0": '"Quoted" dog .', "a.jpg#1": "A cat ."}
    assert references == {"a": ['"Quoted" dog .', "A cat ."]}
    write(tmp_path, "Flickr8k.token.txt", "a.jpg#0\tA dog .\n\na.jpg#1\tA caf\xe9 .\n".encode("latin-1"))
    with pytest.raises(Flickr8kError, match=r"Flickr8k\.token\.txt, line 3: byte 0xe9 is not UTF-8"):
        read_token_file(token)
