"""TSV -> Zarr conversion: round trips against the spec's formulas, identical stores for any worker
count, resuming after an interruption or kill -9, several TSVs into one store, the feature size from
what most rows agree on, a byte-order mark, bad input and messages that name the fix, and a
converter that never imports torch."""
import base64
import errno
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import zarr

from butd.cli import run
from butd.features import schema
from butd.features.convert import chunks, convert_stores, convert_tsv, direct_io, float16, lifecycle, pool
from butd.features.tsv import TSVFormatError
from butd.synthetic.scene import format_row, write_tsv
from butd.tasks import get_task

import tsv_to_zarr
from helpers import (
    BOM,
    REAL_TSV,
    cli_run,
    imports_torch,
    interrupted_after,
    make_rows,
    make_tsv,
    read_store,
    spec_rows,
    spec_spatials,
    start_slowed_conversion,
    store_files,
    wait_for_chunks,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, "converters", "tsv_to_zarr.py")


def check_against_rows(path, rows, layout, dtype):
    """Every array equals the rows, spatials are the spec's bits, padding is zero."""
    arrays, attrs = read_store(path)
    n, k = len(rows), max(r.num_boxes for r in rows)
    assert attrs["complete"] is True and attrs["num_images"] == n and attrs["max_boxes"] == k
    assert attrs["layout"] == layout and attrs["dtype"] == dtype
    assert list(arrays[schema.IMAGE_IDS]) == [r.image_id for r in rows]
    assert arrays["features"].dtype == np.dtype(dtype) and arrays["features"].shape == (n, k, 32)
    for i, r in enumerate(rows):
        b = r.num_boxes
        assert arrays["num_boxes"][i] == b and arrays["img_h"][i] == r.img_h and arrays["img_w"][i] == r.img_w
        np.testing.assert_array_equal(arrays["features"][i, :b], r.features.astype(dtype))
        np.testing.assert_array_equal(arrays["boxes"][i, :b], r.boxes)
        assert arrays["spatials"][i, :b].tobytes() == spec_spatials(r.boxes, str(r.img_w), str(r.img_h)).tobytes()
        for name in ("features", "boxes", "spatials"):
            assert not arrays[name][i, b:].any()
        if layout == "obj36":
            for name in ("objects_id", "objects_conf", "attrs_id", "attrs_conf"):
                np.testing.assert_array_equal(arrays[name][i, :b], getattr(r, name))
        else:
            assert "objects_id" not in arrays
    if dtype == "float16":   # within float16 rounding of the float32 values
        for i, r in enumerate(rows):
            np.testing.assert_allclose(arrays["features"][i, :r.num_boxes], r.features, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("layout, boxes, dtype", [
    ("obj36", (36, 36), "float16"), ("obj36", (10, 100), "float32"),
    ("anderson", (10, 100), "float16"), ("anderson", (36, 36), "float32")])
def test_round_trip(tmp_path, layout, boxes, dtype):
    rows = make_tsv(tmp_path / "f.tsv", layout, boxes=boxes)
    summary = convert_tsv(str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr"), dtype=dtype, chunk_images=8,
                          workers=1, progress=False)
    assert summary.rows == 40 and summary.bytes_in == os.path.getsize(tmp_path / "f.tsv")
    check_against_rows(tmp_path / "s.zarr", rows, layout, dtype)
    assert not os.path.exists(tmp_path / "s.zarr" / chunks.PROGRESS_DIR)
    np.testing.assert_array_equal(schema.read_image_ids(str(tmp_path / "s.zarr")), [r.image_id for r in rows])


def test_one_and_two_workers_give_identical_stores(tmp_path):
    make_tsv(tmp_path / "f.tsv", boxes=(10, 100), n=45)
    for w in (1, 2):
        convert_tsv(str(tmp_path / "f.tsv"), str(tmp_path / f"w{w}.zarr"), chunk_images=4, workers=w, progress=False)
    assert store_files(tmp_path / "w1.zarr") == store_files(tmp_path / "w2.zarr")


@pytest.mark.parametrize("chunk_images", [8, 32])   # 32: features chunks are 4 KB-aligned, so O_DIRECT
def test_raw_chunks_are_what_zarr_writes(tmp_path, chunk_images):
    """Uncompressed chunks are written directly; they must be the bytes zarr itself writes."""
    make_tsv(tmp_path / "f.tsv", n=41)
    convert_tsv(str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr"), chunk_images=chunk_images, workers=1,
                progress=False)
    convert_tsv(str(tmp_path / "f.tsv"), str(tmp_path / "z.zarr"), chunk_images=chunk_images, workers=1,
                progress=False, compressor="zstd")
    raw, _ = read_store(tmp_path / "s.zarr")
    compressed, _ = read_store(tmp_path / "z.zarr")
    attrs = schema.read_attrs(str(tmp_path / "s.zarr"))
    for f in schema.fields_for("obj36"):
        np.testing.assert_array_equal(raw[f.name], compressed[f.name])
        ref = zarr.create_array(str(tmp_path / "ref" / f.name), shape=f.shape(attrs),
                                chunks=(chunk_images,) + f.shape(attrs)[1:], dtype=f.numpy_dtype(attrs),
                                compressors=None,
                                fill_value=0)
        ref[:] = raw[f.name]
        for chunk in range(attrs.num_chunks):
            with open(schema.chunk_file(str(tmp_path / "s.zarr"), f, chunk), "rb") as a, \
                    open(schema.chunk_file(str(tmp_path / "ref"), f, chunk), "rb") as b:
                assert a.read() == b.read(), (f.name, chunk)


def test_direct_and_buffered_writes_give_the_same_store(tmp_path, monkeypatch):
    make_tsv(tmp_path / "f.tsv", n=41)
    for name, direct in (("d.zarr", True), ("b.zarr", False)):
        monkeypatch.setitem(direct_io.DIRECT, "ok", direct)
        convert_tsv(str(tmp_path / "f.tsv"), str(tmp_path / name), chunk_images=32, workers=1, progress=False)
    assert store_files(tmp_path / "d.zarr") == store_files(tmp_path / "b.zarr")


@pytest.mark.parametrize("source", [REAL_TSV, os.path.join(os.path.dirname(REAL_TSV), "layouts", "bua_npz")])
def test_features_streamed_row_by_row_are_the_buffered_bytes(tmp_path, monkeypatch, source):
    """2048 float16 values per box make every box whole 4 KB blocks: the rows are written as they
    are decoded (O_DIRECT), the padding left as holes, and must give the bytes a buffered write of
    the chunk gives (bua_npz: 20, 10 and 36 boxes per image, padded to 36)."""
    streams = []
    opened = direct_io.RowStream.open

    def recorded(*args):
        streams.append(opened(*args))
        return streams[-1]
    monkeypatch.setattr(direct_io.RowStream, "open", recorded)
    convert_tsv(source, str(tmp_path / "d.zarr"), chunk_images=2, workers=1, progress=False)
    assert len(streams) >= 2 and all(s is not None for s in streams) or not direct_io.DIRECT["ok"]
    monkeypatch.setitem(direct_io.DIRECT, "ok", False)
    convert_tsv(source, str(tmp_path / "b.zarr"), chunk_images=2, workers=1, progress=False)
    assert store_files(tmp_path / "d.zarr") == store_files(tmp_path / "b.zarr")


def test_line_endings_blank_lines_and_no_final_newline(tmp_path):
    """The scan predicts where each line ends; CRLF, blank lines and a last line without its
    newline must give the same store as plain lines."""
    lines = _good_lines(9)
    _write_lines(tmp_path / "plain.tsv", lines)
    odd = [line.replace("\n", "\r\n") if i % 2 else line for i, line in enumerate(lines)]
    odd.insert(4, "\n")
    odd.insert(7, "  \r\n")
    odd[-1] = odd[-1].rstrip("\r\n")
    _write_lines(tmp_path / "odd.tsv", odd)
    for w in (1, 2):
        for name in ("plain", "odd"):
            convert_tsv(str(tmp_path / f"{name}.tsv"), str(tmp_path / f"{name}{w}.zarr"), chunk_images=2,
                        workers=w, progress=False)
        plain, _ = read_store(tmp_path / f"plain{w}.zarr")
        odd_store, _ = read_store(tmp_path / f"odd{w}.zarr")
        for name in plain:
            np.testing.assert_array_equal(plain[name], odd_store[name])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_real_rows(tmp_path, dtype):
    convert_tsv(REAL_TSV, str(tmp_path / "real.zarr"), chunk_images=4, workers=1, progress=False, dtype=dtype)
    arrays, attrs = read_store(tmp_path / "real.zarr")
    assert attrs["feature_dim"] == 2048 and attrs["num_images"] == 10
    for i, item in enumerate(spec_rows(REAL_TSV)):
        assert arrays[schema.IMAGE_IDS][i] == item["img_id"]
        np.testing.assert_array_equal(arrays["features"][i], item["features"].astype(dtype))
        np.testing.assert_array_equal(arrays["boxes"][i], item["boxes"])
        for k in ("objects_id", "objects_conf", "attrs_id", "attrs_conf"):
            np.testing.assert_array_equal(arrays[k][i], item[k])
        assert arrays["spatials"][i].tobytes() == spec_spatials(item["boxes"], item["img_w"], item["img_h"]).tobytes()


def test_interrupted_run_resumes_to_the_same_store(tmp_path, monkeypatch):
    make_tsv(tmp_path / "f.tsv", n=40)
    tsv, out = str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr")
    convert_tsv(tsv, str(tmp_path / "ref.zarr"), chunk_images=4, workers=1, progress=False)
    with interrupted_after(monkeypatch, 3), pytest.raises(KeyboardInterrupt):
        convert_tsv(tsv, out, chunk_images=4, workers=1, progress=False)
    assert schema.read_attrs(out).complete is False
    with pytest.raises(ValueError, match="incomplete"):
        schema.read_image_ids(out)
    summary = convert_tsv(tsv, out, chunk_images=4, workers=2, progress=False)
    assert (summary.chunks_resumed, summary.chunks_converted) == (3, 7)
    assert store_files(out) == store_files(tmp_path / "ref.zarr")
    again = convert_tsv(tsv, out, chunk_images=4, workers=2, progress=False)
    assert again.already_complete


KILLED_RUN = """
from butd.features.convert import convert_tsv
convert_tsv(sys.argv[1], sys.argv[2], chunk_images=2, workers=1, progress=False)
"""


def test_kill9_then_same_command_resumes(tmp_path):
    make_tsv(tmp_path / "f.tsv", n=60)
    tsv, out = str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr")
    convert_tsv(tsv, str(tmp_path / "ref.zarr"), chunk_images=2, workers=1, progress=False)
    proc = start_slowed_conversion(KILLED_RUN, [tsv, out], delay=0.05)
    wait_for_chunks(proc, out, 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert schema.read_attrs(out).complete is False
    done = len(lifecycle.done_chunks(out))
    assert 0 < done < 30
    result = subprocess.run([sys.executable, CLI, tsv, "--out", out, "--chunk_images", "2", "--workers", "2",
                             "--quiet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"resumed: {done} chunks" in result.stdout
    assert store_files(out) == store_files(tmp_path / "ref.zarr")


def _write_lines(path, lines):
    with open(path, "w", newline="") as f:
        f.writelines(lines)


def _good_lines(n=8):
    from butd.synthetic.scene import format_row
    return [format_row(r) for r in make_rows(n=n)]


def _break(lines, what, index=3):
    """Break ``lines[index]`` as ``what`` says (a duplicate repeats line 2's id); returns its image id."""
    fields = lines[index].rstrip("\n").split("\t")
    if what == "truncated":
        lines[index] = lines[index][: len(lines[index]) // 2] + "\n"
    elif what == "base64":
        fields[9] = fields[9][:50] + "!" + fields[9][51:]
    elif what == "fields":
        fields.append("extra")
    elif what == "length":
        fields[7] = "30"
    elif what == "duplicate":
        fields[0] = lines[1].split("\t")[0]
    if what != "truncated":
        lines[index] = "\t".join(fields) + "\n"
    return fields[0]


@pytest.mark.parametrize("what, reason", [
    ("truncated", "line truncated"), ("base64", "bad base64"), ("fields", "11 tab-separated fields"),
    ("length", "num_boxes (30)"), ("duplicate", "duplicate image id: first seen on line 2")])
@pytest.mark.parametrize("workers", [1, 2])
def test_bad_input_errors(tmp_path, what, reason, workers):
    lines = _good_lines()
    image_id = _break(lines, what)
    _write_lines(tmp_path / "f.tsv", lines)
    out = tmp_path / "s.zarr"
    with pytest.raises(TSVFormatError) as e:
        convert_tsv(str(tmp_path / "f.tsv"), str(out), chunk_images=2, workers=workers, progress=False)
    assert str(e.value).startswith(f"{tmp_path / 'f.tsv'}:4: image id '{image_id}': ")
    assert reason in str(e.value)
    assert not os.path.exists(out) or schema.read_attrs(str(out)).complete is False


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.tsv: features TSV not found"):
        convert_tsv(str(tmp_path / "nothere.tsv"), str(tmp_path / "s.zarr"), progress=False)
    result = subprocess.run([sys.executable, CLI, str(tmp_path / "nothere.tsv"), "--out", str(tmp_path / "s.zarr")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "nothere.tsv: features TSV not found" in result.stderr
    assert not os.path.exists(tmp_path / "s.zarr")
    _write_lines(tmp_path / "empty.tsv", [])
    with pytest.raises(ValueError, match="no valid rows"):
        convert_tsv(str(tmp_path / "empty.tsv"), str(tmp_path / "s.zarr"), progress=False)


def test_skip_bad_rows_writes_a_report(tmp_path):
    good = make_rows(n=12)
    lines = _good_lines(12)
    broken = {index + 1: _break(lines, what, index) for index, what in ((3, "base64"), (5, "length"), (8, "duplicate"))}
    lines.insert(6, "\n")   # a blank line is not a row (and shifts later line numbers)
    _write_lines(tmp_path / "f.tsv", lines)
    stores = []
    for w in (1, 2):
        out = str(tmp_path / f"w{w}.zarr")
        summary = convert_tsv(str(tmp_path / "f.tsv"), out, chunk_images=4, workers=w, on_bad_row="skip",
                              progress=False)
        assert summary.rows == 9 and summary.skipped == 3
        with open(out + ".bad_rows.json") as f:
            report = json.load(f)
        assert [(r["line"], r["image_id"]) for r in report["rows"]] == [(4, broken[4]), (6, broken[6]), (10, broken[9])]
        assert "bad base64" in report["rows"][0]["reason"] and "first seen on line 2" in report["rows"][2]["reason"]
        stores.append(store_files(out))
    assert stores[0] == stores[1]
    kept = [r for i, r in enumerate(good) if i not in (3, 5, 8)]
    check_against_rows(tmp_path / "w1.zarr", kept, "obj36", "float16")


def test_changed_input_needs_overwrite(tmp_path):
    make_tsv(tmp_path / "f.tsv", n=10)
    tsv, out = str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr")
    convert_tsv(tsv, out, workers=1, progress=False)
    with pytest.raises(ValueError, match="--overwrite"):
        convert_tsv(tsv, out, workers=1, progress=False, dtype="float32")
    rows = make_tsv(tmp_path / "f.tsv", n=12, seed=5)
    with pytest.raises(ValueError, match="--overwrite"):
        convert_tsv(tsv, out, workers=1, progress=False)
    convert_tsv(tsv, out, workers=1, progress=False, overwrite=True)
    check_against_rows(out, rows, "obj36", "float16")
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a zarr store"):
        convert_tsv(tsv, str(tmp_path / "notastore"), workers=1, progress=False, overwrite=True)
    assert (tmp_path / "notastore" / "keep.txt").exists()


def test_task_stores_convert_both_files(sample_dir, tmp_path):
    gqa = get_task("gqa")
    summaries = convert_stores(gqa, str(sample_dir / "GQA-Features"), str(tmp_path / "cache"), workers=1, progress=False)
    assert set(summaries) == {"trainval", "testdev"}
    trainval = schema.read_image_ids(gqa.store_path(str(tmp_path / "cache"), "train"))
    testdev = schema.read_image_ids(gqa.store_path(str(tmp_path / "cache"), "testdev"))
    assert len(trainval) == 36 and len(testdev) == 8 and all(i.startswith("n") for i in testdev)


def test_float16_cast_is_numpys_for_every_non_nan_value():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**32, 3_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    special = np.array([0.0, -0.0, 1e-8, 2.98e-8, 2.99e-8, 6.1e-5, 3e-5, 65504.0, 65519.0, 65520.0, 7e4,
                        np.inf, -np.inf, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11], np.float32)
    values = np.concatenate([values[~np.isnan(values)], special, -special])
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    got = float16.float32_to_float16(values, np.empty(values.shape, np.float16))
    assert got.view(np.uint16).tobytes() == expected.view(np.uint16).tobytes()
    nan = float16.float32_to_float16(np.array([np.nan, -np.nan], np.float32), np.empty(2, np.float16))
    assert np.isnan(nan).all()
    mixed = float16.float32_to_float16(np.array([1.5, np.nan, -2.0, np.inf], np.float32), np.empty(4, np.float16))
    assert mixed[0] == 1.5 and np.isnan(mixed[1]) and mixed[2] == -2.0 and mixed[3] == np.inf
    rows = make_rows(n=3, feature_dim=32)
    scratch = {}
    for r in rows:   # re-used scratch, smaller rows after larger ones
        out = float16.float32_to_float16(r.features[: r.num_boxes - 5], np.empty((r.num_boxes - 5, 32), np.float16), scratch)
        np.testing.assert_array_equal(out, r.features[: r.num_boxes - 5].astype(np.float16))


def test_overwrite_with_other_settings_in_one_process(tmp_path):
    # a compressed store re-made at the same path with another dtype, in the same process (as a
    # notebook or train.py would): every chunk must be written with the new settings
    rows = make_tsv(tmp_path / "f.tsv", n=10)
    out = str(tmp_path / "s.zarr")
    for dtype in ("float16", "float32"):
        convert_tsv(str(tmp_path / "f.tsv"), out, dtype=dtype, compressor="zstd", chunk_images=4, workers=1,
                    overwrite=True, progress=False)
    check_against_rows(out, rows, "obj36", "float32")


def test_skip_report_into_a_directory_not_made_yet(tmp_path):
    lines = _good_lines(6)
    _break(lines, "base64", 2)
    _write_lines(tmp_path / "f.tsv", lines)
    out = str(tmp_path / "new" / "cache" / "s.zarr")
    summary = convert_tsv(str(tmp_path / "f.tsv"), out, chunk_images=4, workers=1, on_bad_row="skip",
                          progress=False)
    assert summary.rows == 5 and os.path.exists(out + ".bad_rows.json")


# A conversion runs the converter's command and the task's file table; it never needs torch, whose
# import alone takes about a second: as long as a 400 MB conversion.
@pytest.mark.parametrize("args", [["--help"], ["TSV", "--out", "OUT", "--workers", "1"],
                                  ["--dataset", "vqa2", "--data", "DATA", "--workers", "1"]])
def test_the_converter_never_imports_torch(tmp_path, args):
    (tmp_path / "VQA2-Features").mkdir()
    for files in get_task("vqa2").stores.values():
        for name in files:
            make_tsv(str(tmp_path / "VQA2-Features" / name), n=4)
    make_tsv(str(tmp_path / "in.tsv"), n=4)
    args = [{"TSV": str(tmp_path / "in.tsv"), "OUT": str(tmp_path / "out.zarr"), "DATA": str(tmp_path)}.get(a, a)
            for a in args]
    assert not imports_torch(CLI, args)


def _real_rows_with_a_narrow_first_row(path):
    """The real sample's rows, the first one's features cut to 36 x 1024 floats (valid base64)."""
    with open(REAL_TSV) as f:
        lines = f.readlines()
    fields = lines[0].rstrip("\n").split("\t")
    features = np.frombuffer(base64.b64decode(fields[9]), np.float32).reshape(36, 2048)
    fields[9] = base64.b64encode(np.ascontiguousarray(features[:, :1024]).tobytes()).decode()
    with open(path, "w", newline="") as f:
        f.writelines(["\t".join(fields) + "\n"] + lines[1:])
    return [line.split("\t")[0] for line in lines]


def test_the_feature_size_comes_from_agreement(tmp_path, capsys):
    tsv, out = str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr")
    ids = _real_rows_with_a_narrow_first_row(tsv)
    with pytest.raises(TSVFormatError) as e:                     # the bad row is blamed, not line 2
        convert_tsv(tsv, out, workers=1, progress=False)
    assert str(e.value).startswith(f"{tsv}:1: ") and "1024" in str(e.value) and "9 of the first 10 rows" in str(e.value)
    summary = convert_tsv(tsv, out, workers=1, progress=False, on_bad_row="skip")
    assert summary.rows == 9 and summary.skipped == 1            # the nine good rows kept
    assert schema.read_image_ids(out).tolist() == ids[1:] and schema.read_attrs(out).feature_dim == 2048
    with open(out + ".bad_rows.json") as f:
        assert [r["line"] for r in json.load(f)["rows"]] == [1]
    # the user says the size: then row 1 is the good one, and a skip of 9 rows out of 10 fails
    status, err = cli_run(tsv_to_zarr.main, [tsv, "--out", str(tmp_path / "t.zarr"), "--feature_dim", "1024",
                                             "--on-bad-row", "skip", "--workers", "1", "--quiet"], capsys)
    assert status == 1 and "9 bad rows against 1 good ones" in err and not os.path.exists(tmp_path / "t.zarr")
    with pytest.raises(TSVFormatError, match=r"f\.tsv:1: .*2048"):
        convert_tsv(tsv, str(tmp_path / "u.zarr"), workers=1, progress=False, feature_dim=2048)


def test_a_tie_asks_for_the_feature_size(tmp_path):
    rows = make_rows(n=2, feature_dim=32) + make_rows(n=2, feature_dim=16, seed=1)
    for i, r in enumerate(rows):
        r.image_id = f"img{i}"
    write_tsv(str(tmp_path / "f.tsv"), rows)
    with pytest.raises(ValueError, match="disagree on the feature size.*--feature_dim"):
        convert_tsv(str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr"), workers=1, progress=False)
    summary = convert_tsv(str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr"), workers=1, progress=False,
                          feature_dim=16, on_bad_row="skip")
    assert summary.rows == 2 and schema.read_image_ids(str(tmp_path / "s.zarr")).tolist() == ["img2", "img3"]


def test_tsv_with_a_bom(tmp_path):
    rows = make_rows(n=6)
    text = "".join(format_row(r) for r in rows).encode()
    (tmp_path / "plain.tsv").write_bytes(text)
    (tmp_path / "bom.tsv").write_bytes(BOM + text)
    for name in ("plain", "bom"):
        convert_tsv(str(tmp_path / f"{name}.tsv"), str(tmp_path / f"{name}.zarr"), chunk_images=4, workers=2,
                    progress=False)
    plain, _ = read_store(tmp_path / "plain.zarr")
    bom, _ = read_store(tmp_path / "bom.zarr")
    assert bom[schema.IMAGE_IDS][0] == rows[0].image_id
    for name in plain:
        np.testing.assert_array_equal(bom[name], plain[name])


def test_another_on_bad_row_names_the_setting(tmp_path, capsys):
    write_tsv(str(tmp_path / "f.tsv"), make_rows(n=5))
    args = [str(tmp_path / "f.tsv"), "--out", str(tmp_path / "s.zarr"), "--workers", "1", "--quiet"]
    assert tsv_to_zarr.main(args) == 0
    capsys.readouterr()
    assert run(tsv_to_zarr.main, args + ["--on-bad-row", "skip"]) == 1
    err = capsys.readouterr().err
    assert "with other settings (--on-bad-row error -> skip)" in err and "--overwrite" in err
    write_tsv(str(tmp_path / "f.tsv"), make_rows(n=6))
    assert run(tsv_to_zarr.main, args) == 1
    assert f"from other input ({tmp_path / 'f.tsv'}: size" in capsys.readouterr().err


def test_a_compressed_tsv_is_named_not_dumped(tmp_path, capsys):
    with open(REAL_TSV, "rb") as f:
        head = f.read(1 << 20)
    with gzip.open(tmp_path / "f.tsv.gz", "wb") as f:
        f.write(head)
    with zipfile.ZipFile(tmp_path / "f.zip", "w") as z:
        z.writestr("f.tsv", head)
    for name, kind in (("f.tsv.gz", "gzip"), ("f.zip", "zip")):
        assert run(tsv_to_zarr.main, [str(tmp_path / name), "--out", str(tmp_path / "s.zarr"), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"compressed file ({kind})" in err and "decompress it first" in err and len(err) < 400, err


def test_several_tsvs_make_the_store_of_their_concatenation(tmp_path, capsys):
    rows = make_rows(n=21)
    write_tsv(str(tmp_path / "a.tsv.0"), rows[:8])
    write_tsv(str(tmp_path / "a.tsv.1"), rows[8:])
    write_tsv(str(tmp_path / "all.tsv"), rows)
    parts = [str(tmp_path / "a.tsv.0"), str(tmp_path / "a.tsv.1")]
    assert tsv_to_zarr.main([*parts, "--out", str(tmp_path / "parts.zarr"), "--chunk_images", "4",
                             "--workers", "2", "--quiet"]) == 0
    convert_tsv(str(tmp_path / "all.tsv"), str(tmp_path / "all.zarr"), chunk_images=4, workers=1, progress=False)
    got, attrs = read_store(tmp_path / "parts.zarr")
    want, _ = read_store(tmp_path / "all.zarr")
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert [f["path"] for f in attrs["source"]["files"]] == [os.path.abspath(p) for p in parts]
    # the fingerprint covers every file: a changed second part is named
    write_tsv(parts[1], rows[8:20])
    with pytest.raises(ValueError, match=r"from other input \(.*a\.tsv\.1: size"):
        convert_tsv(parts, str(tmp_path / "parts.zarr"), chunk_images=4, workers=1, progress=False)


def test_several_tsvs_errors_name_the_right_file_and_resume(tmp_path, monkeypatch):
    rows = make_rows(n=12)
    lines = [format_row(r) for r in rows]
    a, b = str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv")
    with open(a, "w") as f:
        f.writelines(lines[:6])
    with open(b, "w") as f:
        f.writelines(lines[6:8] + [lines[2]] + lines[8:])       # line 3 of b repeats line 3 of a
    with pytest.raises(TSVFormatError, match=rf"^{b}:3: .*first seen on {a}:3"):
        convert_tsv([a, b], str(tmp_path / "s.zarr"), workers=1, progress=False)
    with open(b, "w") as f:
        f.writelines(lines[6:8] + [lines[8][:1000] + "\n"] + lines[9:])
    with pytest.raises(TSVFormatError, match=rf"^{b}:3: "):
        convert_tsv([a, b], str(tmp_path / "s.zarr"), workers=1, progress=False)
    with open(b, "w") as f:
        f.writelines(lines[6:])
    out = str(tmp_path / "s.zarr")
    with interrupted_after(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        convert_tsv([a, b], out, chunk_images=2, workers=1, progress=False)
    summary = convert_tsv([a, b], out, chunk_images=2, workers=2, progress=False)
    assert (summary.chunks_resumed, summary.chunks_converted, summary.rows) == (2, 4, 12)
    assert schema.read_image_ids(out).tolist() == [r.image_id for r in rows]


def test_convert_stores_uses_every_file_of_a_store(tmp_path):
    class TwoFiles:
        title, stores = "test", {"trainval": ("x.tsv.0", "x.tsv.1")}

        def store_path(self, cache, store):
            return get_task("gqa").store_path(cache, store)
    rows = make_rows(n=10)
    write_tsv(str(tmp_path / "x.tsv.0"), rows[:4])
    write_tsv(str(tmp_path / "x.tsv.1"), rows[4:])
    convert_stores(TwoFiles(), str(tmp_path), str(tmp_path / "cache"), workers=1, progress=False)
    assert schema.read_image_ids(str(tmp_path / "cache" / "trainval.zarr")).tolist() == [r.image_id for r in rows]


def test_a_task_missing_inputs_names_them_all_before_converting_any(sample_dir, tmp_path, capsys):
    features = tmp_path / "GQA-Features"
    features.mkdir()
    (features / "gqa_testdev_obj36.tsv").write_bytes((sample_dir / "GQA-Features" / "gqa_testdev_obj36.tsv").read_bytes())
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="vg_gqa_obj36.tsv: features TSV not found"):
        convert_stores(get_task("gqa"), str(features), str(cache), workers=1, progress=False)
    assert not cache.exists()   # testdev's TSV is there, and was not converted either
    (features / "gqa_testdev_obj36.tsv").unlink()
    code, err = cli_run(tsv_to_zarr.main, ["--features", str(features), "--cache", str(cache), "--quiet"], capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: 2 inputs not found, nothing was converted")
    assert "vg_gqa_obj36.tsv" in err and "gqa_testdev_obj36.tsv" in err and not cache.exists()


def test_too_little_free_space_stops_before_writing_then_resumes(tmp_path, monkeypatch):
    make_tsv(tmp_path / "f.tsv", n=12)
    tsv, out = str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr")
    convert_tsv(tsv, str(tmp_path / "ref.zarr"), chunk_images=2, workers=1, progress=False)
    real = shutil.disk_usage
    free = {"bytes": 0}
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=free["bytes"]))
    with pytest.raises(OSError, match=r"s.zarr: the store needs .* GB more \(6 chunks .* has 0.00 GB free") as e:
        convert_tsv(tsv, out, chunk_images=2, workers=1, progress=False)
    assert e.value.errno == errno.ENOSPC and not os.path.exists(out)
    free["bytes"] = 10**12
    with interrupted_after(monkeypatch, 4), pytest.raises(KeyboardInterrupt):
        convert_tsv(tsv, out, chunk_images=2, workers=1, progress=False)
    free["bytes"] = 0   # a resumed store checks what it has left to write
    with pytest.raises(OSError, match=r"\(2 chunks"):
        convert_tsv(tsv, out, chunk_images=2, workers=1, progress=False)
    free["bytes"] = 10**12
    summary = convert_tsv(tsv, out, chunk_images=2, workers=1, progress=False)
    assert (summary.chunks_resumed, summary.chunks_converted) == (4, 2)
    assert store_files(out) == store_files(tmp_path / "ref.zarr")


def test_a_small_conversion_gives_no_speed_and_names_the_padding(tmp_path):
    make_tsv(tmp_path / "f.tsv", n=5)
    text = str(convert_tsv(str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr"), chunk_images=4, workers=1,
                           progress=False))
    assert "MB/s" not in text and "a small input" in text
    assert "the store's last chunk is stored whole: 3 of its 4 image slots are padding" in text


CTRL_C_RUN = """
sys.path.insert(0, sys.argv[1])
from butd.cli import run
import tsv_to_zarr
sys.exit(run(tsv_to_zarr.main, sys.argv[2:]))
"""


def test_ctrl_c_of_a_compressed_conversion_says_one_thing(tmp_path):
    """Ctrl-C reaches every process of the group: the user reads how to resume, not zarr's pending tasks."""
    make_tsv(tmp_path / "f.tsv", n=240)     # 120 chunks of >= 0.05 s on 2 workers: >= 3 s to interrupt
    out = str(tmp_path / "s.zarr")
    proc = start_slowed_conversion(CTRL_C_RUN, [os.path.dirname(CLI), str(tmp_path / "f.tsv"), "--out", out,
                                                "--compressor", "zstd", "--chunk_images", "2", "--workers", "2",
                                                "--quiet"], delay=0.05,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_chunks(proc, out)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip() == "interrupted: the chunks already written are kept; run the same command again to resume"


def test_a_file_that_is_not_a_tsv_is_one_short_line(tmp_path, capsys):
    """One 'field' of 400,000 characters (base64 without tabs) is quoted by its first characters."""
    (tmp_path / "f.tsv").write_text(base64.b64encode(os.urandom(300_000)).decode() + "\n")
    status, err = cli_run(tsv_to_zarr.main, [str(tmp_path / "f.tsv"), "--out", str(tmp_path / "s.zarr"), "--quiet"],
                          capsys)
    assert status == 1 and err.count("\n") == 1 and len(err) < 300, err[:400]
    assert "f.tsv:1: image id" in err and "(400,000 characters)" in err and "is this a features TSV?" in err


def test_inputs_copied_moved_or_touched_keep_their_store(tmp_path):
    """A data folder copied to scratch (new paths, new times) or a touched TSV: the store is still
    theirs, not converted again (size and content decide); the same size with other content is
    other input."""
    (tmp_path / "a").mkdir()
    rows = make_tsv(tmp_path / "a" / "f.tsv", n=10)
    convert_tsv(str(tmp_path / "a" / "f.tsv"), str(tmp_path / "a" / "s.zarr"), workers=1, progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copy)    # new times, as cp -r
    tsv, out = str(tmp_path / "b" / "f.tsv"), str(tmp_path / "b" / "s.zarr")
    assert convert_tsv(tsv, out, workers=1, progress=False).already_complete
    os.utime(tsv, ns=(10**9, 10**9))
    assert convert_tsv(tsv, out, workers=1, progress=False).already_complete
    check_against_rows(out, rows, "obj36", "float16")
    text = open(tsv).read()
    at = text.rstrip("\n").rfind("\t") + 20                           # inside the last row's features
    changed = text[:at] + ("B" if text[at] != "B" else "C") + text[at + 1:]
    assert len(changed) == len(text)
    with open(tsv, "w") as f:
        f.write(changed)
    with pytest.raises(lifecycle.StoreMismatch, match=r"from other input \(.*f\.tsv: content \(first and last MiB\)"):
        convert_tsv(tsv, out, workers=1, progress=False)


def _made_before_content_samples(out: str) -> str:
    """Make ``out``'s attributes those of a store converted before sources had content samples."""
    group = zarr.open_group(out, mode="r+")
    source = {k: v for k, v in group.attrs["source"].items() if k != "sample"}
    fingerprint = lifecycle.fingerprint(source, group.attrs[lifecycle.SETTINGS_ATTR])
    group.attrs.update({"source": source, "fingerprint": fingerprint})
    return fingerprint


def test_a_store_made_before_content_samples_is_checked_as_then(tmp_path):
    """A store whose source has no content sample keeps its fingerprint: other input when its
    input's time moved; found complete where its path, size and time are unchanged, and from then
    on it keeps the sample, so that a copy of its input is still its input."""
    make_tsv(tmp_path / "f.tsv", n=10)
    tsv, out = str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr")
    convert_tsv(tsv, out, workers=1, progress=False)
    _made_before_content_samples(out)
    stamp = os.stat(tsv).st_mtime_ns
    os.utime(tsv, ns=(10**9, 10**9))
    with pytest.raises(lifecycle.StoreMismatch, match=r"f\.tsv: modified \(ns\) \d+ -> 1000000000"):
        convert_tsv(tsv, out, workers=1, progress=False)
    os.utime(tsv, ns=(stamp, stamp))
    fingerprint = _made_before_content_samples(out)
    assert convert_tsv(tsv, out, workers=1, progress=False).already_complete
    assert schema.read_attrs(out).fingerprint == fingerprint and "sample" in schema.read_attrs(out).source
    kept = os.stat(os.path.join(out, "zarr.json")).st_mtime_ns
    assert convert_tsv(tsv, out, workers=1, progress=False).already_complete
    assert os.stat(os.path.join(out, "zarr.json")).st_mtime_ns == kept        # written once, not at every check
    os.utime(tsv, ns=(10**9, 10**9))
    assert convert_tsv(tsv, out, workers=1, progress=False).already_complete
    # older still, without its settings recorded: found by its fingerprint, as then
    os.utime(tsv, ns=(stamp, stamp))
    _made_before_content_samples(out)
    del zarr.open_group(out, mode="r+").attrs[lifecycle.SETTINGS_ATTR]
    assert convert_tsv(tsv, out, workers=1, progress=False).already_complete


def test_an_unfinished_conversion_rerun_with_skip_starts_over(tmp_path):
    """A bad row stops a conversion with --on-bad-row error part way; the same command with skip,
    as the error advises, converts the rest (a complete store made with error stays refused)."""
    lines = _good_lines(12)
    image_id = _break(lines, "base64", index=9)
    _write_lines(tmp_path / "f.tsv", lines)
    tsv, out = str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr")
    with pytest.raises(TSVFormatError):
        convert_tsv(tsv, out, chunk_images=2, workers=1, progress=False)
    assert schema.read_attrs(out).complete is False
    summary = convert_tsv(tsv, out, chunk_images=2, workers=1, progress=False, on_bad_row="skip")
    assert (summary.rows, summary.skipped, summary.chunks_resumed) == (11, 1, 0)
    assert image_id not in schema.read_image_ids(out)


def test_an_unfinished_skip_conversion_rerun_without_skip_is_refused_not_restarted(tmp_path, monkeypatch):
    """Forgetting --on-bad-row skip on the re-run of a conversion killed part way: refused, naming
    the setting, so that its work is not thrown away unasked."""
    make_tsv(tmp_path / "f.tsv", n=12)
    tsv, out = str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr")
    with interrupted_after(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        convert_tsv(tsv, out, chunk_images=2, workers=1, progress=False, on_bad_row="skip")
    with pytest.raises(lifecycle.StoreMismatch, match=r"--on-bad-row skip -> error"):
        convert_tsv(tsv, out, chunk_images=2, workers=1, progress=False)
    assert convert_tsv(tsv, out, chunk_images=2, workers=1, progress=False, on_bad_row="skip").chunks_resumed == 2


def test_a_folder_that_is_not_a_store_is_refused_with_one_piece_of_advice(tmp_path):
    make_tsv(tmp_path / "f.tsv", n=4)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a feature store") as e:
        convert_tsv(str(tmp_path / "f.tsv"), str(tmp_path / "mine"), workers=1, progress=False)
    assert "--overwrite" not in str(e.value) and (tmp_path / "mine" / "notes.txt").exists()


@pytest.mark.parametrize("value, dtype, reason", [
    (np.nan, "float16", "NaN or infinite"), (np.inf, "float32", "NaN or infinite"),
    (1e6, "float16", "beyond float16's range (+-65504)")])
def test_features_a_store_cannot_hold_name_the_image(tmp_path, value, dtype, reason):
    """NaN, infinity, or a value float16 would hold as infinite: an error naming the image and its
    file, not a store a model trains on NaN from; float32 holds a large value as it is."""
    rows = make_rows(n=6, feature_dim=8)
    rows[4].features[1, 3] = value
    write_tsv(str(tmp_path / "f.tsv"), rows)
    tsv, out = str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match=rf"f\.tsv: image id '{rows[4].image_id}': .*{re.escape(reason)}"):
        convert_tsv(tsv, out, chunk_images=2, workers=1, progress=False, dtype=dtype)
    assert schema.read_attrs(out).complete is False
    if value == 1e6:
        convert_tsv(tsv, out, chunk_images=2, workers=1, progress=False, dtype="float32", overwrite=True)
        assert zarr.open_array(os.path.join(out, "features"))[4, 1, 3] == np.float32(1e6)


def test_a_skip_run_that_fails_leaves_no_report_that_looks_final(tmp_path):
    """--on-bad-row skip stopped by a NaN (not a row it skips): no OUT.bad_rows.json saying "skipped
    0" beside the unfinished store; the report appears when the store is complete."""
    rows = make_rows(n=6, feature_dim=8)
    rows[4].features[1, 3] = np.nan
    write_tsv(str(tmp_path / "f.tsv"), rows)
    tsv, out = str(tmp_path / "f.tsv"), str(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="NaN"):
        convert_tsv(tsv, out, chunk_images=2, workers=1, progress=False, on_bad_row="skip")
    assert not os.path.exists(out + ".bad_rows.json") and schema.read_attrs(out).complete is False
    rows[4].features[1, 3] = 0.5
    write_tsv(tsv, rows)
    convert_tsv(tsv, out, chunk_images=2, workers=1, progress=False, on_bad_row="skip", overwrite=True)
    with open(out + ".bad_rows.json") as f:
        assert json.load(f)["skipped"] == 0


def _mark_and_nap(path: str) -> str:
    with open(path, "w"):
        pass
    time.sleep(0.05)
    return path


def _die_at_seven(path: str) -> str:
    if path.endswith("/7"):
        os.kill(os.getpid(), signal.SIGKILL)   # what the out-of-memory killer does
    return _mark_and_nap(path)


def test_a_worker_killed_mid_run_is_an_error_not_a_hang(tmp_path):
    """multiprocessing.Pool replaces a killed worker and waits for its task forever (and so does
    its join): the runner names the death instead, and closing it returns."""
    runner = pool.Runner(2)
    done = []

    def run():
        try:
            for _ in runner(_die_at_seven, [str(tmp_path / f"{i}") for i in range(60)]):
                pass
        except pool.WorkerDied as e:
            done.append(str(e))
        finally:
            runner.close()
            done.append("closed")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert done and done[-1] == "closed", "the runner hung on the lost task"
    assert re.search(r"conversion worker \(pid \d+\) was killed by SIGKILL .*run the same command again", done[0])
    assert len(os.listdir(tmp_path)) < 30    # at once, not when the worker's replacement has done the rest


def test_closing_the_pool_skips_the_tasks_not_started_and_kills_no_worker(tmp_path):
    """After a failure (or Ctrl-C) the runner stops its workers by skipping what they have not
    started: killing one while it sends a result leaves the pool's result lock held, and its
    shutdown waits for it forever."""
    runner = pool.Runner(2)
    workers = list(runner.pool._pool)
    results = runner(_mark_and_nap, [str(tmp_path / f"{i}") for i in range(60)])
    next(results)
    runner.close()
    assert 1 <= len(os.listdir(tmp_path)) < 60
    assert all(w.exitcode == 0 for w in workers)        # ended on the pool's sentinel, not killed
