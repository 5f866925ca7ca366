"""Finding, validating and reading data folders: every problem is one line naming file and fix."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydistill.data.files import find_split_files, read_split, split_dataset, validate_data_dir
from raydistill.errors import DataError


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_tiny_data_dir_is_valid_and_reads(tiny_data_dir):
    validate_data_dir(tiny_data_dir)
    data = read_split(tiny_data_dir, "val")
    assert len(data.sources) == len(data.targets) == 4
    assert data.sources[0] == "the cat sat on the mat and looked at the dog ."
    assert data.targets[0] == "cat ."
    assert data.refs is None


def test_missing_folder(tmp_path):
    with pytest.raises(DataError) as err:
        validate_data_dir(tmp_path / "nope")
    assert "nope" in _one_line(err) and "does not exist" in str(err.value)


def test_missing_split_names_folder_and_files(tiny_data_dir):
    for ext in ("source", "target"):
        (tiny_data_dir / f"test.{ext}").unlink()
    with pytest.raises(DataError) as err:
        validate_data_dir(tiny_data_dir)
    msg = _one_line(err)
    assert str(tiny_data_dir) in msg and "test.source + test.target" in msg and "test.jsonl" in msg


def test_missing_partner_file(tiny_data_dir):
    (tiny_data_dir / "val.target").unlink()
    with pytest.raises(DataError) as err:
        validate_data_dir(tiny_data_dir)
    assert "val.target" in _one_line(err) and "val.source" in str(err.value)


def test_count_mismatch_names_both_files_and_counts(tiny_data_dir):
    with open(tiny_data_dir / "train.target", "a") as f:
        f.write("extra .\n")
    with pytest.raises(DataError) as err:
        validate_data_dir(tiny_data_dir)
    msg = _one_line(err)
    assert "train.source has 6 lines" in msg and "train.target has 7" in msg


def test_empty_file(tiny_data_dir):
    (tiny_data_dir / "val.source").write_bytes(b"")
    with pytest.raises(DataError) as err:
        validate_data_dir(tiny_data_dir)
    assert "val.source is empty" in _one_line(err)


def test_non_utf8_names_file_and_line(tiny_data_dir):
    (tiny_data_dir / "train.target").write_bytes(b"ok .\nfine .\ncaf\xe9 .\na\nb\nc\n")
    with pytest.raises(DataError) as err:
        validate_data_dir(tiny_data_dir)
    msg = _one_line(err)
    assert "train.target:3" in msg and "UTF-8" in msg


def test_blank_line_names_file_and_line(tiny_data_dir):
    (tiny_data_dir / "test.source").write_text("a\nb\n  \nd\n")
    with pytest.raises(DataError) as err:
        validate_data_dir(tiny_data_dir)
    assert "test.source:3: blank line" in _one_line(err)


def test_final_newline_optional(tmp_path):
    (tmp_path / "train.source").write_text("a b\nc d")  # no final newline
    (tmp_path / "train.target").write_text("a\nc\n")
    validate_data_dir(tmp_path, splits=("train",))
    assert read_split(tmp_path, "train").sources == ["a b", "c d"]


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_jsonl_reads(tmp_path):
    rows = [{"source": "a b", "target": "a"}, {"source": "c", "target": "d"}]
    _write_jsonl(tmp_path / "train.jsonl", rows)
    assert find_split_files(tmp_path, "train")["format"] == "jsonl"
    data = read_split(tmp_path, "train")
    assert data.sources == ["a b", "c"] and data.targets == ["a", "d"]


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [{"source": "a", "target": "b"}, '{"source": "a",'])
    with pytest.raises(DataError) as err:
        validate_data_dir(tmp_path, splits=("train",))
    assert "train.jsonl:2: not valid JSON" in _one_line(err)


def test_jsonl_missing_key(tmp_path):
    rows = [{"source": "a", "target": "b"}, {"source": "a", "tgt": "b"}]
    _write_jsonl(tmp_path / "val.jsonl", rows)
    with pytest.raises(DataError) as err:
        validate_data_dir(tmp_path, splits=("val",))
    msg = _one_line(err)
    assert "val.jsonl:2" in msg and '"target"' in msg


def test_parquet_reads_and_checks_columns(tmp_path):
    pq.write_table(pa.table({"source": ["x y", "z"], "target": ["x", "z"], "extra": [1, 2]}),
                   tmp_path / "train.parquet")
    assert read_split(tmp_path, "train").targets == ["x", "z"]
    pq.write_table(pa.table({"src": ["x"], "target": ["x"]}), tmp_path / "val.parquet")
    with pytest.raises(DataError) as err:
        validate_data_dir(tmp_path, splits=("train", "val"))
    assert "val.parquet lacks column(s) source" in _one_line(err)


def test_refs_read_and_count_checked(tiny_data_dir):
    refs = [{"references": [f"r{i}", f"q{i}"]} for i in range(4)]
    _write_jsonl(tiny_data_dir / "test.refs.jsonl", refs)
    data = read_split(tiny_data_dir, "test", n=2)
    assert data.refs == [["r0", "q0"], ["r1", "q1"]]
    _write_jsonl(tiny_data_dir / "test.refs.jsonl", [{"references": ["r"]}] * 3)
    with pytest.raises(DataError) as err:
        read_split(tiny_data_dir, "test")
    assert "test.refs.jsonl has 3 lines" in _one_line(err) and "4 examples" in str(err.value)


def test_n_caps_examples(tiny_data_dir):
    data = read_split(tiny_data_dir, "train", n=2)
    assert len(data.sources) == len(data.targets) == 2
    assert len(read_split(tiny_data_dir, "train", n=100).sources) == 6


def test_split_dataset_columns(ray_session, tiny_data_dir):
    ds = split_dataset(tiny_data_dir, "train", n=5)
    rows = sorted(ds.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == list(range(5))
    assert rows[1]["source"] == "a dog ran in the park with a red ball ."
    assert rows[1]["target"] == "dog ."


def test_arrow_dataset_keeps_blocks_and_rows_without_a_metadata_task(ray_session, monkeypatch):
    import pyarrow as pa
    import ray.data.read_api

    from raydistill.data.files import arrow_dataset

    tables = [pa.table({"id": [0, 1, 2]}), pa.table({"id": [3, 4]})]
    expected = ray.data.from_arrow(tables)

    def no_task(*args, **kwargs):
        raise AssertionError("arrow_dataset started a Ray task for block metadata")

    monkeypatch.setattr(ray.data.read_api, "cached_remote_fn", no_task)
    ds = arrow_dataset(tables)
    assert ds.num_blocks() == expected.num_blocks() == 2
    assert ds.count() == 5 and ds.schema() == expected.schema()
    assert [r["id"] for r in ds.take_all()] == [r["id"] for r in expected.take_all()]


def test_real_scitldr(scitldr_dir):
    validate_data_dir(scitldr_dir)
    data = read_split(scitldr_dir, "test")
    assert data.refs is not None and len(data.refs) == len(data.sources) == len(data.targets)
    assert data.refs[0][0] == data.targets[0]  # .target holds the first reference
