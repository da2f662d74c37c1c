"""Write tests/data/layouts/: the real obj36 rows of coco_train2014_obj36_10rows.tsv in the feature
layouts other extractors and converters write, each exactly as its own code writes it.

    python tests/data/make_layouts.py        # from the repository root; rewrites tests/data/layouts/

Each writer below transcribes its source's calls (file and dataset names, dtypes, shapes, the
order of writes, pickle protocols); where the source is a GPU extractor, the rows stand in for its
detections. Provenance and what was changed to keep the files small: tests/data/README.md. This
script uses only numpy and h5py (not butd), so the fixtures do not depend on the code they test.
"""
import base64
import csv
import io
import os
import pickle
import sys
import zipfile

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TSV = os.path.join(HERE, "coco_train2014_obj36_10rows.tsv")
OUT = os.path.join(HERE, "layouts")
FIELDNAMES = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes",
              "boxes", "features"]


def read_rows():
    csv.field_size_limit(sys.maxsize)
    with open(TSV, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", fieldnames=FIELDNAMES))
    for item in rows:
        n = int(item["num_boxes"])
        item["boxes"] = np.frombuffer(base64.b64decode(item["boxes"]), np.float32).reshape(n, -1)
        item["features"] = np.frombuffer(base64.b64decode(item["features"]), np.float32).reshape(n, -1)
        for key, dtype in (("objects_id", np.int64), ("objects_conf", np.float32), ("attrs_id", np.int64),
                           ("attrs_conf", np.float32)):
            item[key] = np.frombuffer(base64.b64decode(item[key]), dtype)
    return rows


def spatial_features(bb, image_w, image_h):
    """The converters' spatial features, as the specification, hengyuan-hu and ban-vqa write them."""
    box_width = bb[:, 2] - bb[:, 0]
    box_height = bb[:, 3] - bb[:, 1]
    scaled_width = box_width / image_w
    scaled_height = box_height / image_h
    scaled_x = bb[:, 0] / image_w
    scaled_y = bb[:, 1] / image_h
    scaled_width = scaled_width[..., np.newaxis]
    scaled_height = scaled_height[..., np.newaxis]
    scaled_x = scaled_x[..., np.newaxis]
    scaled_y = scaled_y[..., np.newaxis]
    return np.concatenate((scaled_x, scaled_y, scaled_x + scaled_width, scaled_y + scaled_height,
                           scaled_width, scaled_height), axis=1)


# ---- numpy 1.x's np.save / np.savez_compressed of a pickled object (what the extractors ran on) ----

def numpy1_pickle(array: np.ndarray) -> bytes:
    """``pickle.dump(array, fp, protocol=3)`` as numpy 1.x's ``format.write_array`` did for an object
    array: its globals are named ``numpy.core.*`` (numpy 2 writes ``numpy._core.*``, protocol 4)."""
    return pickle.dumps(array, protocol=3).replace(b"numpy._core.", b"numpy.core.")


def npy_bytes(value) -> bytes:
    """One ``.npy`` as numpy 1.x's ``np.save`` wrote it (format 1.0; objects pickled as above)."""
    from numpy.lib import format as npy
    array = np.asanyarray(value) if not isinstance(value, dict) else np.array(value, dtype=object)
    out = io.BytesIO()
    if array.dtype.hasobject:
        npy.write_array_header_1_0(out, npy.header_data_from_array_1_0(array))
        out.write(numpy1_pickle(array))
    else:
        npy.write_array(out, array, version=(1, 0))
    return out.getvalue()


def savez_compressed(path, **members):
    """numpy 1.x's ``np.savez_compressed``: ``.npz`` appended to the name, a deflated zip with one
    ``<name>.npy`` per keyword, in keyword order, each written with ``force_zip64=True``."""
    if not path.endswith(".npz"):
        path += ".npz"
    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for name, value in members.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as fid:
                fid.write(npy_bytes(value))


# ---- the specification's step 3 (gqa_create_image_features), for one TSV ----

def write_spec(rows, out):
    """trainval36.hdf5 and trainval36_img2idx.pkl (Python 3's pickle.dump: protocol 4)."""
    os.makedirs(out, exist_ok=True)
    indices = {}
    with h5py.File(os.path.join(out, "trainval36.hdf5"), "w") as h:
        n = len(rows)
        img_features = h.create_dataset("image_features", (n, 36, 2048), "f")
        img_bb = h.create_dataset("image_bb", (n, 36, 4), "f")
        spatial = h.create_dataset("spatial_features", (n, 36, 6), "f")
        for counter, item in enumerate(rows):
            image_w, image_h = float(item["img_w"]), float(item["img_h"])
            indices[item["img_id"]] = counter
            img_bb[counter, :, :] = item["boxes"]
            img_features[counter, :, :] = item["features"]
            spatial[counter, :, :] = spatial_features(item["boxes"], image_w, image_h)
    with open(os.path.join(out, "trainval36_img2idx.pkl"), "wb") as f:
        pickle.dump(indices, f, protocol=4)


# ---- hengyuan-hu/bottom-up-attention-vqa tools/detection_features_converter.py (Python 2) ----

def write_hengyuan(rows, imgids, out):
    """train36.hdf5 (one row per image id of the image folder, ``imgids``; rows of images without
    features stay zero) and train36_imgid2idx.pkl (cPickle.dump: protocol 0, integer ids)."""
    os.makedirs(out, exist_ok=True)
    train_imgids = list(imgids)
    train_indices = {}
    with h5py.File(os.path.join(out, "train36.hdf5"), "w") as h_train:
        train_img_features = h_train.create_dataset("image_features", (len(train_imgids), 36, 2048), "f")
        train_img_bb = h_train.create_dataset("image_bb", (len(train_imgids), 36, 4), "f")
        train_spatial = h_train.create_dataset("spatial_features", (len(train_imgids), 36, 6), "f")
        train_counter = 0
        for item in rows:
            image_id = int(item["img_id"].rsplit("_", 1)[1])
            if image_id in train_imgids:
                train_imgids.remove(image_id)
                train_indices[image_id] = train_counter
                train_img_bb[train_counter, :, :] = item["boxes"]
                train_img_features[train_counter, :, :] = item["features"]
                train_spatial[train_counter, :, :] = spatial_features(item["boxes"], float(item["img_w"]),
                                                                      float(item["img_h"]))
                train_counter += 1
    with open(os.path.join(out, "train36_imgid2idx.pkl"), "wb") as f:
        pickle.dump(train_indices, f, protocol=0)


# ---- jnhwkim/ban-vqa tools/adaptive_detection_features_converter.py ----

def write_banvqa(rows, counts, imgids, out):
    """train.hdf5 (flat boxes, pos_boxes with one row per image id of the folder) and
    train_imgid2idx.pkl (_pickle.dump: protocol 3, integer ids). Image ``i`` keeps its first
    ``counts[i]`` boxes, as an adaptive 10-100-box extraction keeps a varying number."""
    os.makedirs(out, exist_ok=True)
    imgids = list(imgids)
    num_boxes = sum(counts)    # the converter's counting pass (known_num_boxes None)
    indices = {}
    with h5py.File(os.path.join(out, "train.hdf5"), "w") as h:
        img_features = h.create_dataset("image_features", (num_boxes, 2048), "f")
        img_bb = h.create_dataset("image_bb", (num_boxes, 4), "f")
        spatial_img_features = h.create_dataset("spatial_features", (num_boxes, 6), "f")
        pos_boxes = h.create_dataset("pos_boxes", (len(imgids), 2), dtype="int32")
        counter, num_boxes = 0, 0
        for item, n in zip(rows, counts):
            image_id = int(item["img_id"].rsplit("_", 1)[1])
            bboxes = item["boxes"][:n]
            if image_id in imgids:
                imgids.remove(image_id)
                indices[image_id] = counter
                pos_boxes[counter, :] = np.array([num_boxes, num_boxes + n])
                img_bb[num_boxes:num_boxes + n, :] = bboxes
                img_features[num_boxes:num_boxes + n, :] = item["features"][:n]
                spatial_img_features[num_boxes:num_boxes + n, :] = spatial_features(
                    bboxes, float(item["img_w"]), float(item["img_h"]))
                counter += 1
                num_boxes += n
    with open(os.path.join(out, "train_imgid2idx.pkl"), "wb") as f:
        pickle.dump(indices, f, protocol=3)


# ---- MILVLG/bottom-up-attention.pytorch utils/extract_utils.py save_roi_features (with attributes) ----

def write_bua(rows, counts, out):
    """``<image>.npz`` per image (``im_file.split('.')[0]``), keeping its first ``counts[i]`` boxes."""
    os.makedirs(out, exist_ok=True)
    for item, n in zip(rows, counts):
        im_file = item["img_id"] + ".jpg"
        info = {
            "image_id": im_file.split(".")[0],
            "image_h": int(item["img_h"]),
            "image_w": int(item["img_w"]),
            "num_boxes": n,
            "objects_id": item["objects_id"][:n].copy(),
            "objects_conf": item["objects_conf"][:n].copy(),
            "attrs_id": item["attrs_id"][:n].copy(),
            "attrs_conf": item["attrs_conf"][:n].copy(),
        }
        output_file = os.path.join(out, im_file.split(".")[0])
        savez_compressed(output_file, x=item["features"][:n], bbox=item["boxes"][:n], num_bbox=n,
                         image_h=int(item["img_h"]), image_w=int(item["img_w"]), info=info)


# ---- MCAN / OpenVQA's features (the caffe extractor): <image>.jpg.npz, x transposed ----

def write_mcan(rows, counts, out):
    os.makedirs(out, exist_ok=True)
    for item, n in zip(rows, counts):
        savez_compressed(os.path.join(out, item["img_id"] + ".jpg.npz"), x=item["features"][:n].transpose(),
                         bbox=item["boxes"][:n], num_bbox=n, image_h=int(item["img_h"]), image_w=int(item["img_w"]))


# ---- facebookresearch/mmf tools/scripts/features/extract_features_vmb.py (--num_features K) ----

def write_mmf(rows, num_features, scored, out, num_classes=1600):
    """``<image>.npy`` [K, 2048] and ``<image>_info.npy`` (np.save of the info dict). ``scored[i]``
    of image ``i``'s K boxes scored above zero (``num_boxes``); ``cls_prob`` is made from the row's
    object class and confidence (the rows hold no class distribution)."""
    os.makedirs(out, exist_ok=True)
    for item, n in zip(rows, scored):
        k = num_features
        cls_prob = np.full((k, num_classes), 0, np.float32)
        conf = item["objects_conf"][:k]
        cls_prob[:] = ((1 - conf) / (num_classes - 1))[:, None]
        cls_prob[np.arange(k), item["objects_id"][:k]] = conf
        info = {
            "bbox": item["boxes"][:k].copy(),
            "num_boxes": n,
            "objects": item["objects_id"][:k].copy(),
            "cls_prob": cls_prob,
            "image_width": int(item["img_w"]),
            "image_height": int(item["img_h"]),
        }
        file_base_name = item["img_id"]
        with open(os.path.join(out, file_base_name + ".npy"), "wb") as f:
            f.write(npy_bytes(item["features"][:k]))
        with open(os.path.join(out, file_base_name + "_info.npy"), "wb") as f:
            f.write(npy_bytes(info))


def main():
    rows = read_rows()
    write_spec(rows[3:5], os.path.join(OUT, "spec"))
    # the image folder has a second image the TSV lacks: its row stays empty and unnamed
    write_hengyuan(rows[5:6], [84002, 999999], os.path.join(OUT, "hengyuan"))
    write_banvqa(rows[6:9], [10, 14, 20], [387267, 888888, 131486, 306661], os.path.join(OUT, "banvqa"))
    write_bua(rows[7:10], [36, 20, 10], os.path.join(OUT, "bua_npz"))
    write_mcan(rows[0:2], [36, 12], os.path.join(OUT, "mcan_npz"))
    write_mmf(rows[1:3], 20, [20, 15], os.path.join(OUT, "mmf_npy"))


if __name__ == "__main__":
    main()
