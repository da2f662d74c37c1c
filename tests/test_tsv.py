"""TSV rows: decoding both layouts, the spec's spatial formula bit for bit, and clear errors."""

import numpy as np
import pytest

from butd.features.tsv import TSVFormatError, decode_row, detect_layout, spatial_features
from butd.synthetic.scene import SceneModel, format_row

from helpers import REAL_TSV, spec_rows, spec_spatials


def make_row(seed=0, num_boxes=36, feature_dim=32, image_id="2300001"):
    rng = np.random.default_rng(seed)
    return SceneModel(rng, feature_dim).image(rng, image_id, num_boxes)


def test_spatial_features_bit_equal_to_spec():
    rng = np.random.default_rng(3)
    for _ in range(20):
        w, h = int(rng.integers(100, 1000)), int(rng.integers(100, 1000))
        x1, y1 = rng.uniform(0, w, 50), rng.uniform(0, h, 50)
        bb = np.stack([x1, y1, x1 + rng.uniform(1, w, 50), y1 + rng.uniform(1, h, 50)], 1).astype(np.float32)
        expected = spec_spatials(bb, str(w), str(h))
        got = spatial_features(bb, w, h)
        assert got.dtype == np.float32 and expected.dtype == np.float32
        assert got.tobytes() == expected.tobytes()
        # batched over images with per-image sizes: the same bits
        batched = spatial_features(np.stack([bb, bb[::-1]]), np.array([w, h]), np.array([h, w]))
        assert batched[0].tobytes() == expected.tobytes()
        assert batched[1].tobytes() == spec_spatials(bb[::-1], str(h), str(w)).tobytes()


@pytest.mark.parametrize("layout", ["obj36", "anderson"])
@pytest.mark.parametrize("num_boxes", [36, 10, 100])
@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_decode_round_trip(layout, num_boxes, ending):
    row = make_row(num_boxes=num_boxes)
    line = format_row(row, layout)[:-1] + ending
    assert detect_layout(line.encode()) == layout
    got = decode_row(line.encode(), layout)
    assert (got.image_id, got.img_h, got.img_w, got.num_boxes) == (row.image_id, row.img_h, row.img_w, num_boxes)
    np.testing.assert_array_equal(got.boxes, row.boxes)
    np.testing.assert_array_equal(got.features, row.features)
    if layout == "obj36":
        for k in ("objects_id", "objects_conf", "attrs_id", "attrs_conf"):
            np.testing.assert_array_equal(getattr(got, k), getattr(row, k))
            assert getattr(got, k).dtype == getattr(row, k).dtype
    else:
        assert got.objects_id is None


def test_anderson_has_width_before_height():
    row = make_row()
    row.img_h, row.img_w = 300, 500
    fields = format_row(row, "anderson").split("\t")
    assert fields[1:3] == ["500", "300"]
    got = decode_row(format_row(row, "anderson").encode(), "anderson")
    assert (got.img_w, got.img_h) == (500, 300)


def test_real_rows_decode_like_the_spec():
    expected = spec_rows(REAL_TSV)
    with open(REAL_TSV, "rb") as f:
        lines = f.readlines()
    assert len(lines) == 10 and lines[0].endswith(b"\r\n")
    for n, (line, item) in enumerate(zip(lines, expected), 1):
        assert detect_layout(line) == "obj36"
        row = decode_row(line, "obj36", REAL_TSV, n)
        assert row.image_id == item["img_id"] and row.num_boxes == 36
        assert (row.img_h, row.img_w) == (int(item["img_h"]), int(item["img_w"].strip()))
        for k in ("boxes", "features", "objects_id", "objects_conf", "attrs_id", "attrs_conf"):
            np.testing.assert_array_equal(getattr(row, k), item[k])
        assert row.features.shape == (36, 2048)


def _bad(line: str, what: str) -> str:
    """Break one part of a good obj36 line."""
    fields = line.rstrip("\n").split("\t")
    if what == "truncated":
        return line[: len(line) // 2] + "\n"
    if what == "base64":
        fields[9] = fields[9][:100] + "*" + fields[9][101:]
    elif what == "fields":
        del fields[3]
    elif what == "num_boxes":
        fields[7] = "35"
    elif what == "size":
        fields[2] = "wide"
    return "\t".join(fields) + "\n"


@pytest.mark.parametrize("what, reason", [
    ("truncated", "expected"), ("base64", "bad base64"), ("fields", "9 tab-separated fields, expected 10"),
    ("num_boxes", "num_boxes (35)"), ("size", "img_w")])
def test_bad_row_errors_name_file_line_and_id(what, reason):
    line = _bad(format_row(make_row(image_id="2391234"), "obj36"), what)
    with pytest.raises(TSVFormatError) as e:
        decode_row(line.encode(), "obj36", "feats.tsv", 7)
    assert str(e.value).startswith("feats.tsv:7: image id '2391234': ")
    assert reason in str(e.value)
    assert (e.value.path, e.value.line, e.value.image_id) == ("feats.tsv", 7, "2391234")


def test_unknown_layout():
    with pytest.raises(TSVFormatError, match="3 tab-separated fields"):
        detect_layout(b"a\tb\tc\n", "x.tsv", 1)


def test_feature_dim_must_match():
    line = format_row(make_row(feature_dim=32), "obj36").encode()
    assert decode_row(line, "obj36", feature_dim=32).features.shape == (36, 32)
    with pytest.raises(TSVFormatError, match="36\\) x 64 float32"):
        decode_row(line, "obj36", feature_dim=64)
