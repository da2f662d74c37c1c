"""Every feature layout users hold, through ``converters/tsv_to_zarr.py``: the files of
tests/data/layouts (the real obj36 rows written as each extractor writes them) convert to stores
equal, image by image, to the rows they were written from; the specification's HDF5 store equals
the TSV store of the same rows; each resumes after an interruption; each kind of bad input is one
line naming the file and image; a pickle that names code is refused and runs nothing; and one
image under two spellings of its id is refused, by the converter and by the question cache."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

from butd.cli import run
from butd.features import schema
from butd.features.convert import convert, lifecycle
from butd.features.inputs import safe_pickle

from helpers import (
    DATA,
    REAL_TSV,
    interrupted_after,
    make_tsv,
    read_store,
    spec_rows,
    spec_spatials,
    start_slowed_conversion,
    store_files,
    wait_for_chunks,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from converters import tsv_to_zarr  # noqa: E402

LAYOUTS = os.path.join(DATA, "layouts")
ROWS = spec_rows(REAL_TSV)


def coco_number(i: int) -> str:
    """hengyuan-hu's and ban-vqa's integer id of real row ``i``."""
    return str(int(ROWS[i]["img_id"].rsplit("_", 1)[1]))


# input, store layout, words of the summary, (real row, boxes kept) in store order, their ids
CASES = {
    "specification hdf5": ("spec/trainval36.hdf5", "hdf5", "36-box HDF5", [(3, 36), (4, 36)], None),
    "hengyuan-hu hdf5": ("hengyuan/train36.hdf5", "hdf5", "36-box HDF5", [(5, 36)], coco_number),
    "ban-vqa adaptive hdf5": ("banvqa/train.hdf5", "hdf5_adaptive", "adaptive HDF5", [(6, 10), (7, 14), (8, 20)],
                              coco_number),
    "bottom-up-attention.pytorch npz": ("bua_npz", "npz", "bottom-up-attention.pytorch", [(8, 20), (9, 10), (7, 36)],
                                        None),
    "MCAN npz": ("mcan_npz", "npz_transposed", "MCAN", [(0, 36), (1, 12)], None),
    "MMF npy": ("mmf_npy", "mmf", "MMF", [(1, 20), (2, 15)], None),
}


def cli(argv, capsys):
    """(exit status, stdout, stderr) of the converter's command line."""
    capsys.readouterr()
    status = run(tsv_to_zarr.main, [str(a) for a in argv] + ["--quiet"])
    out, err = capsys.readouterr()
    return status, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def check_store(path, picks, ids, layout):
    """The store holds, for each (row, n) of ``picks``, the real row's first n features (float16),
    boxes, the specification's spatial features of them (bit for bit), n, the image size; padding
    is zero."""
    arrays, attrs = read_store(path)
    assert attrs["complete"] is True and attrs["layout"] == layout and attrs["feature_dim"] == 2048
    assert list(arrays[schema.IMAGE_IDS]) == ids
    for k, (i, n) in enumerate(picks):
        row = ROWS[i]
        assert arrays["num_boxes"][k] == n
        assert (arrays["img_h"][k], arrays["img_w"][k]) == (int(row["img_h"]), int(row["img_w"]))
        np.testing.assert_array_equal(arrays["features"][k, :n], row["features"][:n].astype(np.float16))
        np.testing.assert_array_equal(arrays["boxes"][k, :n], row["boxes"][:n])
        assert arrays["spatials"][k, :n].tobytes() == spec_spatials(row["boxes"][:n], row["img_w"],
                                                                     row["img_h"]).tobytes()
        for name in ("features", "boxes", "spatials"):
            assert not arrays[name][k, n:].any()


@pytest.mark.parametrize("case", list(CASES))
def test_each_layout_converts_to_the_rows_it_was_written_from(tmp_path, capsys, case):
    given, layout, words, picks, spell = CASES[case]
    out = tmp_path / "s.zarr"
    status, printed, err = cli([os.path.join(LAYOUTS, given), "--out", out, "--workers", "1", "--chunk_images", "2"],
                               capsys)
    assert status == 0, err
    assert words in printed.splitlines()[0]          # the summary names the layout
    ids = [spell(i) if spell else ROWS[i]["img_id"] for i, _ in picks]
    check_store(out, picks, ids, layout)
    if layout.startswith("hdf5"):
        assert "image sizes derived from image_bb and spatial_features" in printed
        # the derived sizes give back the file's own spatial features, bit for bit
        arrays, _ = read_store(out)
        with h5py.File(os.path.join(LAYOUTS, given), "r") as h5:
            spatial, pos = h5["spatial_features"][:], h5["pos_boxes"][:] if "pos_boxes" in h5 else None
        for k, (_, n) in enumerate(picks):
            rows = spatial[k] if pos is None else spatial[pos[k, 0]:pos[k, 1]]
            assert arrays["spatials"][k, :n].tobytes() == rows[:n].tobytes()
    if case in ("hengyuan-hu hdf5", "ban-vqa adaptive hdf5"):
        assert "1 of its" in printed and "named by no id in its id map" in printed


def test_the_specifications_hdf5_store_equals_the_tsv_store_of_the_same_rows(tmp_path):
    with open(REAL_TSV) as f:
        lines = f.readlines()
    (tmp_path / "rows.tsv").write_text("".join(lines[3:5]))      # the rows trainval36.hdf5 was written from
    convert(str(tmp_path / "rows.tsv"), str(tmp_path / "tsv.zarr"), workers=1, progress=False, chunk_images=1)
    convert(os.path.join(LAYOUTS, "spec", "trainval36.hdf5"), str(tmp_path / "hdf5.zarr"), workers=1,
            progress=False, chunk_images=1)
    tsv, tsv_attrs = read_store(tmp_path / "tsv.zarr")
    hdf5, hdf5_attrs = read_store(tmp_path / "hdf5.zarr")
    for key in ("dtype", "feature_dim", "max_boxes", "num_images"):
        assert tsv_attrs[key] == hdf5_attrs[key]
    assert set(hdf5) == {f.name for f in schema.fields_for("hdf5")} | {schema.IMAGE_IDS}
    for name, values in hdf5.items():
        assert values.dtype == tsv[name].dtype and values.tobytes() == tsv[name].tobytes(), name


@pytest.mark.parametrize("case", list(CASES))
def test_each_layout_resumes_after_an_interruption(tmp_path, monkeypatch, case):
    given = os.path.join(LAYOUTS, CASES[case][0])
    chunks = len(CASES[case][3])
    convert(given, str(tmp_path / "ref.zarr"), chunk_images=1, workers=1, progress=False)
    out = str(tmp_path / "s.zarr")
    with interrupted_after(monkeypatch, chunks - 1), pytest.raises(KeyboardInterrupt):
        convert(given, out, chunk_images=1, workers=1, progress=False)
    assert schema.read_attrs(out).complete is False
    summary = convert(given, out, chunk_images=1, workers=2, progress=False)
    assert (summary.chunks_resumed, summary.chunks_converted) == (chunks - 1, 1)
    assert store_files(out) == store_files(tmp_path / "ref.zarr")
    assert convert(given, out, chunk_images=1, workers=1, progress=False).already_complete


KILLED_RUN = """
from butd.features.convert import convert
convert(sys.argv[1], sys.argv[2], chunk_images=1, workers=1, progress=False)
"""


@pytest.mark.parametrize("case", ["ban-vqa adaptive hdf5", "MMF npy"])
def test_kill9_then_the_same_command_resumes(tmp_path, case):
    """kill -9 part-way through an HDF5 cache and a folder; the same command finishes the store."""
    given = os.path.join(LAYOUTS, CASES[case][0])
    out = str(tmp_path / "s.zarr")
    convert(given, str(tmp_path / "ref.zarr"), chunk_images=1, workers=1, progress=False)
    proc = start_slowed_conversion(KILLED_RUN, [given, out], delay=0.1)
    wait_for_chunks(proc, out)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and schema.read_attrs(out).complete is False
    done = len(lifecycle.done_chunks(out))
    assert 0 < done < len(CASES[case][3])
    result = subprocess.run([sys.executable, os.path.join(ROOT, "converters", "tsv_to_zarr.py"), given, "--out", out,
                             "--chunk_images", "1", "--quiet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"resumed: {done} chunks" in result.stdout
    assert store_files(out) == store_files(tmp_path / "ref.zarr")


def test_one_and_two_workers_give_identical_stores_from_a_folder(tmp_path):
    for w in (1, 2):
        convert(os.path.join(LAYOUTS, "bua_npz"), str(tmp_path / f"w{w}.zarr"), chunk_images=1, workers=w,
                progress=False)
    assert store_files(tmp_path / "w1.zarr") == store_files(tmp_path / "w2.zarr")


# ---- bad input: one line naming the file (and the image) ----

def copy_layout(name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(os.path.join(LAYOUTS, name), dst)
    return dst


def rewrite_npz(path, **changes):
    """``path`` written again with some members changed (as numpy writes an .npz)."""
    with np.load(path, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files if k != "info"}
    members.update(changes)
    os.remove(path)
    np.savez_compressed(path, **members)


def test_an_hdf5_cache_without_its_id_map_names_where_it_looked(tmp_path, capsys):
    shutil.copy(os.path.join(LAYOUTS, "spec", "trainval36.hdf5"), tmp_path / "trainval36.hdf5")
    status, _, err = cli([tmp_path / "trainval36.hdf5", "--out", tmp_path / "s.zarr"], capsys)
    line = one_line(err)
    assert status == 1 and f"{tmp_path / 'trainval36.hdf5'}: no id map beside it" in line
    assert "trainval36_img2idx.pkl" in line and "trainval36_imgid2idx.pkl" in line and "--ids" in line
    status, _, err = cli([tmp_path / "trainval36.hdf5", "--out", tmp_path / "s.zarr", "--workers", "1",
                          "--ids", os.path.join(LAYOUTS, "spec", "trainval36_img2idx.pkl")], capsys)
    assert status == 0, err
    assert schema.read_attrs(str(tmp_path / "s.zarr")).num_images == 2


def test_an_id_map_naming_a_row_that_is_not_there(tmp_path, capsys):
    folder = copy_layout("spec", tmp_path)
    ids = {ROWS[3]["img_id"]: 0, "ghost": 7, ROWS[4]["img_id"]: 1}
    with open(folder / "trainval36_img2idx.pkl", "wb") as f:
        pickle.dump(ids, f)
    status, _, err = cli([folder / "trainval36.hdf5", "--out", tmp_path / "s.zarr"], capsys)
    line = one_line(err)
    assert status == 1 and f"{folder / 'trainval36_img2idx.pkl'}, row 7: image id 'ghost': the id map names row 7" in line
    assert "has 2 rows" in line and not os.path.exists(tmp_path / "s.zarr")
    status, printed, err = cli([folder / "trainval36.hdf5", "--out", tmp_path / "k.zarr", "--workers", "1",
                                "--on-bad-row", "skip"], capsys)
    assert status == 0, err
    report = json.loads((tmp_path / "k.zarr.bad_rows.json").read_text())
    assert [(r["image_id"], r["where"]) for r in report["rows"]] == [("ghost", "row 7")]
    check_store(tmp_path / "k.zarr", [(3, 36), (4, 36)], [ROWS[3]["img_id"], ROWS[4]["img_id"]], "hdf5")


def test_an_hdf5_cache_with_neither_image_sizes_nor_spatial_features_says_what_is_missing(tmp_path, capsys):
    folder = copy_layout("spec", tmp_path)
    with h5py.File(folder / "trainval36.hdf5", "a") as h5:
        del h5["spatial_features"]
    status, _, err = cli([folder / "trainval36.hdf5", "--out", tmp_path / "s.zarr"], capsys)
    assert status == 1 and "holds no image sizes and no spatial_features to derive them from" in one_line(err)


def test_spatial_features_no_image_size_explains_are_a_bad_image(tmp_path, capsys):
    folder = copy_layout("spec", tmp_path)
    with h5py.File(folder / "trainval36.hdf5", "a") as h5:
        h5["spatial_features"][1, 5, 4] *= 1.01          # one box's scaled width no longer its width / w
    status, _, err = cli([folder / "trainval36.hdf5", "--out", tmp_path / "s.zarr", "--workers", "1"], capsys)
    line = one_line(err)
    assert status == 1 and f"row 1: image id {ROWS[4]['img_id']!r}: no image size derives its spatial_features" in line
    status, _, err = cli([folder / "trainval36.hdf5", "--out", tmp_path / "k.zarr", "--workers", "1",
                          "--on-bad-row", "skip"], capsys)
    assert status == 0, err
    assert [r["image_id"] for r in json.loads((tmp_path / "k.zarr.bad_rows.json").read_text())["rows"]] == \
        [ROWS[4]["img_id"]]


def test_num_bbox_larger_than_x(tmp_path, capsys):
    folder = copy_layout("bua_npz", tmp_path)
    bad = folder / "COCO_train2014_000000387267.npz"
    rewrite_npz(bad, num_bbox=np.array(50))
    status, _, err = cli([folder, "--out", tmp_path / "s.zarr"], capsys)
    line = one_line(err)
    assert status == 1 and f"{bad}: image id 'COCO_train2014_000000387267': num_bbox (50) matches neither axis of " \
                           "x ([36, 2048]): the file does not hold the boxes it counts" in line


def test_a_truncated_npz_is_named_and_skipped_with_a_report(tmp_path, capsys):
    folder = copy_layout("mcan_npz", tmp_path)
    shutil.copy(os.path.join(LAYOUTS, "mcan_npz", "COCO_train2014_000000132417.jpg.npz"),
                folder / "COCO_train2014_000000000009.jpg.npz")
    bad = folder / "COCO_train2014_000000000009.jpg.npz"
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) // 2])
    status, _, err = cli([folder, "--out", tmp_path / "s.zarr"], capsys)
    line = one_line(err)
    assert status == 1 and f"{bad}: image id 'COCO_train2014_000000000009': not a readable .npz" in line
    status, printed, err = cli([folder, "--out", tmp_path / "k.zarr", "--workers", "1", "--on-bad-row", "skip"],
                               capsys)
    assert status == 0, err
    assert "skipped 1 bad rows" in printed
    report = json.loads((tmp_path / "k.zarr.bad_rows.json").read_text())
    assert report["source"] == str(folder) and [r["file"] for r in report["rows"]] == [str(bad)]
    check_store(tmp_path / "k.zarr", [(0, 36), (1, 12)], [ROWS[0]["img_id"], ROWS[1]["img_id"]], "npz_transposed")


def test_a_folder_mixing_layouts_is_refused(tmp_path, capsys):
    folder = copy_layout("bua_npz", tmp_path)
    shutil.copy(os.path.join(LAYOUTS, "mcan_npz", "COCO_train2014_000000573195.jpg.npz"), folder)
    status, _, err = cli([folder, "--out", tmp_path / "s.zarr"], capsys)
    line = one_line(err)
    assert status == 1 and "mixes layouts" in line
    assert "COCO_train2014_000000131486.npz is bottom-up-attention.pytorch" in line
    assert "COCO_train2014_000000573195.jpg.npz is MCAN" in line
    for name in ("COCO_train2014_000000573195.npy", "COCO_train2014_000000573195_info.npy"):
        shutil.copy(os.path.join(LAYOUTS, "mmf_npy", name), folder)
    status, _, err = cli([folder, "--out", tmp_path / "s.zarr"], capsys)
    assert status == 1 and "mixes layouts: .npz files" in one_line(err) and ".npy files (MMF" in err


def test_mmf_features_without_their_info_file(tmp_path, capsys):
    folder = copy_layout("mmf_npy", tmp_path)
    os.remove(folder / "COCO_train2014_000000578174_info.npy")
    status, _, err = cli([folder, "--out", tmp_path / "s.zarr"], capsys)
    line = one_line(err)
    assert status == 1 and "COCO_train2014_000000578174.npy: image id 'COCO_train2014_000000578174': no " \
                           "COCO_train2014_000000578174_info.npy beside it" in line


def test_an_mmf_info_file_without_its_features_is_named_or_left_out_with_skip(tmp_path, capsys):
    """The image was left out silently (the opposite, features without their info file, is an error)."""
    folder = copy_layout("mmf_npy", tmp_path)
    os.remove(folder / "COCO_train2014_000000578174.npy")
    status, _, err = cli([folder, "--out", tmp_path / "s.zarr"], capsys)
    assert status == 1 and one_line(err).startswith(
        f"error: {folder / 'COCO_train2014_000000578174_info.npy'}: an MMF info file without its features file "
        "COCO_train2014_000000578174.npy (1 such in")
    status, out, _ = cli([folder, "--out", tmp_path / "s.zarr", "--on-bad-row", "skip"], capsys)
    assert status == 0 and "1 info file(s) without their features file left out" in out
    assert schema.read_attrs(str(tmp_path / "s.zarr")).num_images == 1


def test_inputs_of_two_layouts_are_refused(tmp_path, capsys):
    status, _, err = cli([REAL_TSV, os.path.join(LAYOUTS, "bua_npz"), "--out", tmp_path / "s.zarr"], capsys)
    assert status == 1 and "inputs of different layouts" in one_line(err)


# ---- pickles that name code ----

class RunsCommand:
    """Pickled, names ``os.system``: loading it with pickle runs ``command``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def npy_of(obj) -> bytes:
    """An .npy of ``obj`` pickled into a 0-d object array, as np.save writes a dict."""
    import io

    from numpy.lib import format as npy
    array = np.empty((), dtype=object)
    array[()] = obj
    out = io.BytesIO()
    npy.write_array_header_1_0(out, npy.header_data_from_array_1_0(array))
    pickle.dump(array, out, protocol=3)
    return out.getvalue()


def test_pickles_that_name_code_are_refused_and_run_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = RunsCommand(f"touch {marker}")
    assert pickle.loads(pickle.dumps(evil)) == 0 and marker.exists()   # the pickle does run the command ...
    marker.unlink()

    spec = copy_layout("spec", tmp_path)                              # ... an id map that names it
    with open(spec / "trainval36_img2idx.pkl", "wb") as f:
        pickle.dump({ROWS[3]["img_id"]: 0, ROWS[4]["img_id"]: evil}, f)
    mmf = copy_layout("mmf_npy", tmp_path)                            # ... an MMF info file
    (mmf / "COCO_train2014_000000578174_info.npy").write_bytes(npy_of({"bbox": evil, "num_boxes": 3}))
    bua = copy_layout("bua_npz", tmp_path)                            # ... an npz's info
    path = bua / "COCO_train2014_000000131486.npz"
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist() if name != "info.npy"}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in {**members, "info.npy": npy_of({"num_boxes": evil})}.items():
            zf.writestr(name, data)
    for given, named in ((spec / "trainval36.hdf5", spec / "trainval36_img2idx.pkl"),
                         (mmf, mmf / "COCO_train2014_000000578174_info.npy"), (bua, path)):
        for mode in ("error", "skip"):                                # never skipped as a mere bad image
            status, _, err = cli([given, "--out", tmp_path / "s.zarr", "--workers", "1", "--on-bad-row", mode,
                                  "--overwrite"], capsys)
            line = one_line(err)
            assert status == 1 and str(named) in line and "refused: its pickle names posix.system" in line, line
            assert not marker.exists()


def test_the_restricted_unpickler_reads_the_plain_data_and_arrays_these_files_hold():
    info = {"image_id": "x", "num_boxes": 3, "objects_id": np.arange(3), "objects_conf": np.ones(3, np.float32),
            "bbox": np.zeros((3, 4), np.float32), "scale": np.float32(0.5), "ok": True, "none": None,
            "nested": [(1, 2.0), {"b": b"bytes"}]}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(info, protocol=protocol)
        # protocols 0-3 name globals in plain text: also as numpy 1.x named them
        variants = (data, data.replace(b"numpy._core.", b"numpy.core.")) if protocol <= 3 else (data,)
        for data in variants:
            back = safe_pickle.loads(data, "test", "info")
            assert back.keys() == info.keys() and back["image_id"] == "x" and back["nested"] == info["nested"]
            np.testing.assert_array_equal(back["objects_id"], info["objects_id"])
            assert back["scale"] == np.float32(0.5) and back["scale"].dtype == np.float32
    for name in ("eval", "exec", "getattr", "__import__"):
        with pytest.raises(safe_pickle.UnsafePickleError, match=f"names builtins.{name}"):
            safe_pickle.loads(f"cbuiltins\n{name}\n(S'1'\ntR.".encode(), "test", "id map")
    with pytest.raises(ValueError, match="not a readable id map"):
        safe_pickle.loads(pickle.dumps({"a": 1})[:-3], "test", "id map")


# ---- one image, one row ----

def test_one_image_under_two_spellings_is_refused_by_the_converter(tmp_path, capsys):
    with open(REAL_TSV) as f:
        lines = f.readlines()
    (tmp_path / "a.tsv").write_text("".join(lines[:3]))
    renamed = lines[5].replace(ROWS[5]["img_id"], coco_number(1), 1)    # row 1's image, as Anderson's files name it
    (tmp_path / "b.tsv").write_text(lines[4] + renamed)
    argv = [tmp_path / "a.tsv", tmp_path / "b.tsv", "--out", tmp_path / "s.zarr", "--workers", "1"]
    status, _, err = cli(argv + ["--dataset", "vqa2"], capsys)
    line = one_line(err)
    assert status == 1 and f"{tmp_path / 'b.tsv'}:2: image id '573195': the same image as " \
                           f"'COCO_train2014_000000573195' on {tmp_path / 'a.tsv'}:2" in line
    assert cli(argv, capsys)[0] == 0          # GQA's ids are compared as they are: two images
    # a folder of npz files too
    folder = copy_layout("mcan_npz", tmp_path)
    shutil.copy(folder / "COCO_train2014_000000573195.jpg.npz", folder / "573195.npz")
    with pytest.raises(ValueError, match=r"COCO_train2014_000000573195.jpg.npz: image id 'COCO_train2014_000000573195': "
                                         r"the same image as '573195' on .*/573195.npz"):
        from butd.tasks import get_task
        convert(str(folder), str(tmp_path / "f.zarr"), workers=1, progress=False, image_key=get_task("vqa2").image_key)


def test_one_image_under_two_spellings_in_a_store_is_refused_by_the_question_cache(tmp_path):
    from butd import questions
    from butd.synthetic.vqa2 import generate
    root = str(tmp_path / "sample")
    paths = generate(root, seed=7, train_images=12, val_images=3, test_images=2, questions_per_image=2,
                     feature_dim=16, emb_dim=32)
    features, cache = os.path.join(root, "VQA2-Features"), os.path.join(root, "VQA2-Cache")
    train = os.path.join(features, "train2014_obj36.tsv")
    with open(train) as f:
        lines = f.readlines()
    first = lines[0].split("\t", 1)[0]
    number = str(int(first.rsplit("_", 1)[1]))
    lines.append(lines[1].replace(lines[1].split("\t", 1)[0], number, 1))
    with open(train, "w") as f:
        f.writelines(lines)
    for store, files in (("train2014", ["train2014_obj36.tsv"]), ("val2014", ["val2014_obj36.tsv"]),
                         ("test2015", ["test2015_obj36.tsv"])):
        convert([os.path.join(features, f) for f in files], os.path.join(cache, f"{store}.zarr"), workers=1,
                progress=False)                          # no image_key: the store keeps both spellings
    inputs = questions.Inputs("vqa2", os.path.join(root, "VQA2-Questions"), paths["glove"], cache, emb_dim=32)
    with pytest.raises(ValueError) as e:
        questions.build(inputs, os.path.join(cache, "questions"), workers=1, progress=False)
    message = str(e.value)
    assert f"train2014.zarr: holds image {first!r} (row 0) and {number!r} (row {len(lines) - 1})" in message
    assert "two spellings" in message and train in message


def test_the_command_line_converts_an_hdf5_cache_in_a_subprocess(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "converters", "tsv_to_zarr.py"),
                             os.path.join(LAYOUTS, "banvqa", "train.hdf5"), "--out", str(tmp_path / "s.zarr"),
                             "--quiet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "adaptive HDF5 cache of ban-vqa" in result.stdout and "3 rows" in result.stdout


def test_a_format_the_input_is_not_is_named_as_such(tmp_path):
    """--format that the input's own signature or name contradicts: one line saying what it is,
    not an error from deep in the wrong reader (an id map looked for beside a TSV, an image id cut
    out of an HDF5 file's name); a --feature_dim the rows do not have names the flag."""
    make_tsv(tmp_path / "f.tsv", n=4, feature_dim=16)
    with h5py.File(tmp_path / "t.hdf5", "w") as f:
        f["image_features"] = np.zeros((2, 3, 4), np.float32)
    out = str(tmp_path / "o.zarr")
    for given, kwargs, message in (
            ("t.hdf5", {"format": "npz"}, "t.hdf5: --format npz, but it is an hdf5 input; leave --format out"),
            ("f.tsv", {"format": "hdf5"}, "f.tsv: --format hdf5, but it is not an HDF5 file"),
            ("f.tsv", {"format": "npy"}, "f.tsv: expected MMF .npy feature files: a file ending in .npy"),
            ("f.tsv", {"feature_dim": 8}, "16 feature values per box, but --feature_dim is 8")):
        with pytest.raises(ValueError) as e:
            convert(str(tmp_path / given), out, workers=1, progress=False, **kwargs)
        assert message in str(e.value), (given, kwargs, str(e.value))
        assert not os.path.exists(out)


def test_a_folder_copied_is_still_its_stores_input_and_one_changed_in_place_is_not(tmp_path):
    """A copy of a folder (new paths and times) keeps its store; a file rewritten in place with the
    same size (a sample reads only some files' content) is other input, by the folder's listing."""
    folder = copy_layout("bua_npz", tmp_path)
    out = str(tmp_path / "s.zarr")
    convert(str(folder), out, workers=1, progress=False)
    moved = shutil.copytree(folder, tmp_path / "moved", copy_function=shutil.copy)
    assert convert(str(moved), out, workers=1, progress=False).already_complete
    first = sorted(os.listdir(folder))[0]
    os.utime(folder / first, ns=(10**9, 10**9))
    with pytest.raises(lifecycle.StoreMismatch, match=r"from other input \(.*bua_npz: names, sizes and times"):
        convert(str(folder), out, workers=1, progress=False)


def test_format_picks_one_layout_of_a_folder_that_mixes_two(tmp_path):
    folder = copy_layout("bua_npz", tmp_path)
    reference = str(tmp_path / "ref.zarr")
    convert(str(folder), reference, workers=1, progress=False)
    for name in ("COCO_train2014_000000573195.npy", "COCO_train2014_000000573195_info.npy"):
        shutil.copy(os.path.join(LAYOUTS, "mmf_npy", name), folder)
    convert(str(folder), str(tmp_path / "s.zarr"), workers=1, progress=False, format="npz")
    picked, _ = read_store(str(tmp_path / "s.zarr"))
    assert picked["features"].tobytes() == read_store(reference)[0]["features"].tobytes()
