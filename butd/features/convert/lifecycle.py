"""The store a conversion writes: create it, find one to resume, verify it, mark it complete."""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shlex
import shutil
from typing import Optional

import numpy as np

from butd.features import schema
from butd.features.convert.chunks import PROGRESS_DIR, marker_path
from butd.features.convert.plan import PLAN_FILE, Plan
from butd.features.schema import IMAGE_IDS, StoreAttrs, fields_for

SETTINGS_ATTR = "conversion_settings"
SHOWN = {"sample": "content (first and last MiB)", "mtime_ns": "modified (ns)",   # a source's keys, in messages
         "listing": "names, sizes and times"}
# The command-line flag of each setting, for messages.
FLAGS = {"layout": "--layout", "dtype": "--dtype", "compressor": "--compressor", "chunk_images": "--chunk_images",
         "on_bad_row": "--on-bad-row", "feature_dim": "--feature_dim", "schema_version": "(store format version)"}


def fingerprint(source: dict, settings: dict) -> str:
    blob = json.dumps({"source": source, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def compressor_codec(name: str):
    """The zarr codec of ``--compressor name``. On real obj36 float16 features (a third of them
    zeros) zstd level 1 stores 1.36x smaller, encodes 2x and decodes 1.5x faster than level 3
    (1.33x); blosc is the fast one: lz4 over bit-shuffled values, 1.07x smaller, decoding ~2.5x
    faster than zstd (byte-shuffled lz4 saved 1%)."""
    from zarr.codecs import BloscCodec, ZstdCodec
    codecs = {"none": None, "zstd": ZstdCodec(level=1),
              "blosc": BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")}
    return codecs[name]


def create_store(out_path: str, attrs: StoreAttrs, plan: Plan) -> None:
    import zarr
    group = zarr.open_group(out_path, mode="w", attributes=attrs.to_json())
    for f in fields_for(attrs.layout):
        shape = f.shape(attrs)
        group.create_array(f.name, shape=shape, **schema.array_chunking(f, attrs),
                           dtype=f.numpy_dtype(attrs), compressors=compressor_codec(attrs.compressor),
                           fill_value=0, config={"write_empty_chunks": True})
    ids = group.create_array(IMAGE_IDS, shape=(attrs.num_images,), chunks=(attrs.chunk_images,),
                             dtype=str, fill_value="")
    ids[:] = plan.image_ids
    os.makedirs(os.path.join(out_path, PROGRESS_DIR), exist_ok=True)
    plan.save(os.path.join(out_path, PROGRESS_DIR, PLAN_FILE))   # last: its presence means "created"


def remove_store(out_path: str) -> None:
    """Delete an existing store (or what an interrupted one left, ``left_by_us``), refusing anything
    else (``--overwrite`` on a wrong path). Its ``zarr.json`` goes last, so that a store whose removal
    is interrupted is still recognised as one."""
    if not os.path.lexists(out_path):
        return
    if not (os.path.isdir(out_path) and (os.path.exists(os.path.join(out_path, "zarr.json"))
                                         or left_by_us(out_path))):
        raise ValueError(f"{out_path}: exists and is not a zarr store; refusing to delete it "
                         "(choose another --out)")
    for name in os.listdir(out_path):
        if name != "zarr.json":
            path = os.path.join(out_path, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    shutil.rmtree(out_path)


def left_by_us(out_path: str) -> bool:
    """True for a directory without ``zarr.json`` that holds only what a conversion writes (its
    arrays, the image ids, its progress), or nothing: a store whose creation or removal was
    interrupted, to be started over without ``--overwrite``. A user's own folder has other files."""
    ours = {f.name for f in schema.FIELDS} | {IMAGE_IDS, PROGRESS_DIR}
    return os.path.isdir(out_path) and set(os.listdir(out_path)) <= ours


def done_chunks(out_path: str) -> set:
    names = os.listdir(os.path.join(out_path, PROGRESS_DIR))
    return {int(n[6:14]) for n in names if n.startswith("chunk-") and n.endswith(".json")}


def chunk_bytes(attrs: StoreAttrs) -> int:
    """Bytes one chunk of every field takes on disk in an uncompressed store (chunks are whole)."""
    return sum(math.prod(f.shape(attrs)[1:]) * attrs.chunk_images * f.numpy_dtype(attrs).itemsize
               for f in fields_for(attrs.layout))


def check_free_space(out_path: str, attrs: StoreAttrs, chunks_left: int) -> None:
    """Raise OSError, before writing them, when the ``chunks_left`` chunks of an uncompressed store
    need more than the free space where it is (a compressed store's size is known only once written).
    The conversion then resumes where it stopped, once there is room."""
    if attrs.compressor != "none" or not chunks_left:
        return
    one = chunk_bytes(attrs)
    need = one * chunks_left
    free = shutil.disk_usage(out_path if os.path.exists(out_path) else os.path.dirname(os.path.abspath(out_path))).free
    if need > free:
        raise OSError(errno.ENOSPC, f"{out_path}: the store needs {need / 1e9:.2f} GB more ({chunks_left} chunks of "
                      f"{one / 1e6:.1f} MB) and its file system has {free / 1e9:.2f} GB free; free some "
                      "space or choose another --out (run the same command again to resume)")


def verify(out_path: str, attrs: StoreAttrs, plan: Plan) -> None:
    """Every chunk's marker present, rows and ids as planned and unique, every chunk file there."""
    import zarr

    def fail(why):
        raise RuntimeError(f"{out_path}: verification failed: {why}; re-run with --overwrite")

    ids = []
    for chunk in range(attrs.num_chunks):
        try:
            with open(marker_path(out_path, chunk)) as f:
                ids += json.load(f)["image_ids"]
        except FileNotFoundError:
            fail(f"chunk {chunk} was never written")
    if len(ids) != attrs.num_images:
        fail(f"{len(ids)} rows written, expected {attrs.num_images}")
    if len(set(ids)) != len(ids):
        fail("duplicate image ids")
    stored = np.asarray(zarr.open_array(os.path.join(out_path, IMAGE_IDS), mode="r")[:].tolist(), dtype=str)
    if not (np.array_equal(stored, np.asarray(ids)) and np.array_equal(stored, plan.image_ids)):
        fail("image ids differ from the rows written")
    for f in fields_for(attrs.layout):
        for chunk in range(attrs.num_chunks):
            path = schema.chunk_file(out_path, f, chunk)
            if not os.path.exists(path):
                fail(f"missing chunk file {path}")
            if attrs.compressor == "none":
                expected = math.prod(f.shape(attrs)[1:]) * attrs.chunk_images * f.numpy_dtype(attrs).itemsize
                if os.path.getsize(path) != expected:
                    fail(f"chunk file {path} has {os.path.getsize(path)} bytes, expected {expected}")


def record_settings(out_path: str, settings: dict) -> None:
    """Keep the conversion's settings in the store's attributes, so that a re-run with other ones
    can say which changed."""
    import zarr
    zarr.open_group(out_path, mode="r+").attrs.update({SETTINGS_ATTR: settings})


def resume_command(out_path: str) -> str:
    """The converter's command that resumes (or makes) the store at ``out_path``: the inputs its
    attributes record (an HDF5 cache's id map as ``--ids``; an MMF info file goes with its features
    file) and the settings it was made with, quoted for a shell."""
    source = schema.read_attrs(out_path).source
    paths = [str(f["path"]) for f in source.get("files", [source]) if "path" in f]
    inputs = [p for p in paths if not p.endswith((".pkl", "_info.npy"))] or ["INPUT"]
    ids = [word for p in paths if p.endswith(".pkl") for word in ("--ids", p)]
    return shlex.join(["python", "converters/tsv_to_zarr.py", *inputs, "--out", out_path, *ids,
                       *as_flags(recorded_options(out_path))])


def require_complete(out_path: str) -> StoreAttrs:
    """The attributes of the complete store at ``out_path``; for one whose conversion was
    interrupted, ValueError naming the command that resumes it."""
    attrs = schema.read_attrs(out_path)
    if not attrs.complete:
        raise ValueError(f"{out_path}: feature store is incomplete (its conversion was interrupted or failed); "
                         f"run it again to resume it: `{resume_command(out_path)}`")
    return attrs


def as_flags(options: dict) -> list:
    """``recorded_options`` as the converter's flags: ``["--dtype", "float32", "--compressor", "zstd"]``."""
    return [word for k, v in options.items() if k in FLAGS for word in (FLAGS[k], str(v))]


def recorded_options(out_path: str) -> dict:
    """The ``convert_tsv`` settings the store at ``out_path`` was made with (those it records, else
    those its attributes show), so that checking or resuming it keeps them; ``{}`` where there is no
    readable store. Not the layout: read again from the input, a changed input is then named as
    such rather than failing to parse as the old layout."""
    try:
        with open(os.path.join(out_path, "zarr.json")) as f:
            attributes = json.load(f).get("attributes", {})
        recorded = attributes.get(SETTINGS_ATTR) or _shown_settings(StoreAttrs.from_json(attributes, out_path))
    except (OSError, ValueError, TypeError):
        return {}
    return {k: v for k, v in recorded.items() if k in FLAGS and k not in ("layout", "schema_version")}


def mark_complete(out_path: str) -> None:
    import zarr
    zarr.open_group(out_path, mode="r+").attrs.update({"complete": True})
    shutil.rmtree(os.path.join(out_path, PROGRESS_DIR))


def dir_bytes(path: str) -> int:
    """Bytes of every file under ``path`` (a store), or of ``path`` itself if it is a file."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def bad_rows_report_path(out_path: str) -> str:
    return os.path.normpath(out_path) + ".bad_rows.json"


SAMPLE_BYTES = 1 << 20


def content_sample(path: str, size: int) -> str:
    """A hash of the file's size and of its first and last MiB (all of it, if smaller): what a
    copy, a move or a touch keeps and another extraction of the same images (the same size, to the
    byte, in obj36 TSVs) does not. Two reads, whatever the file's size."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()[:32]


def source_of(path: str, what: str = "features TSV") -> dict:
    """Path, size, modification time and content sample (``content_sample``) of the input file
    ``path`` (a ``what``), which must be a readable file: the fingerprint of a conversion is made of
    these; a store found beside inputs that moved or were touched is still theirs
    (``same_inputs``)."""
    try:
        st = os.stat(path)
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path}: is a directory, expected a {what} file")
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except PermissionError:
        raise PermissionError(f"{path}: {what} is not readable (permission denied)") from None
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sample": content_sample(path, st.st_size)}


def sources_of(paths: list, what: str = "features TSV") -> list:
    """``source_of`` each file; the same file twice is an error."""
    sources = [source_of(p, what) for p in paths]
    seen = {}
    for path, source in zip(paths, sources):
        if source["path"] in seen:
            raise ValueError(f"{path}: given twice (also as {seen[source['path']]}); each input once")
        seen[source["path"]] = path
    return sources


def existing_store(out_path: str, fp: str, source: dict, settings: dict) -> Optional[StoreAttrs]:
    """The attributes of a store at ``out_path`` that this conversion may continue, None if there is
    no such store yet; raises if something else is there."""
    if not os.path.lexists(out_path):
        return None
    try:
        attrs = schema.read_attrs(out_path)
    except (OSError, ValueError):   # no zarr.json, not JSON, or not our attributes
        if left_by_us(out_path):
            remove_store(out_path)
            return None
        # --overwrite would refuse it too (remove_store): nothing in it is a conversion's
        raise NotAStore(out_path) from None
    if attrs.fingerprint == fp:
        return attrs
    if attrs.fingerprint == fingerprint(_without_samples(source), settings):
        if attrs.source != source:        # made before content samples were kept: its inputs unchanged
            _keep_samples(out_path, source)
        return attrs
    old = _recorded_settings(out_path)
    if same_inputs(attrs.source, source):
        if old == settings:        # the inputs were moved, copied or touched: the store is still theirs
            return attrs
        if not attrs.complete and old is not None and _differing(old, settings) == {"on_bad_row"} \
                and settings["on_bad_row"] == "skip":
            # a bad row stopped an unfinished conversion, which said to skip it: its plan holds that
            # row, so a skip starts over (skip -> error stays refused: it would lose work unasked)
            remove_store(out_path)
            return None
    raise StoreMismatch(out_path, _what_changed(out_path, attrs, source, settings))


class NotAStore(ValueError):
    """Something at ``out_path`` that no conversion wrote; ``advice`` in the command's terms."""

    def __init__(self, out_path: str, advice: str = "choose another --out, or move it away yourself"):
        self.out_path = out_path
        super().__init__(f"{out_path}: exists and is not a feature store (its files were not written by a "
                         f"conversion); {advice}")


class StoreMismatch(ValueError):
    """A store at ``out_path`` made ``what`` ("from other input (...)", "with other settings (...)")
    than this conversion; ``advice``: what to do about it, in the command's terms."""

    def __init__(self, out_path: str, what: str,
                 advice: str = "run with the store's settings, or pass --overwrite to start over"):
        self.out_path, self.what = out_path, what
        super().__init__(f"{out_path}: exists but was made {what}; {advice}")


def same_inputs(old: dict, new: dict) -> bool:
    """Whether two sources (``source_of``, a folder's, or ``{"files": [...]}``) are the same input
    files: by size and content sample wherever the store recorded one, wherever they are now;
    a store made before samples were kept, by path, size and modification time as then."""
    return not _input_changes(old, new)


def _without_samples(source: dict) -> dict:
    """``source`` as it was recorded before content samples were kept."""
    if "files" in source:
        return {**source, "files": [_without_samples(f) for f in source["files"]]}
    return {k: v for k, v in source.items() if k != "sample"}


def _keep_samples(out_path: str, source: dict) -> None:
    """A store made before content samples were kept, found with its inputs unchanged: its source
    records their samples from now on, so that it is still theirs once they are copied or moved
    (its fingerprint, which question caches name, stays). A read-only store stays as it is."""
    import zarr
    try:
        zarr.open_group(out_path, mode="r+").attrs.update({"source": source})
    except OSError:
        pass


def _recorded_settings(out_path: str) -> Optional[dict]:
    with open(os.path.join(out_path, "zarr.json")) as f:
        return json.load(f).get("attributes", {}).get(SETTINGS_ATTR)


def _differing(old: dict, new: dict) -> set:
    return {k for k in set(old) | set(new) if old.get(k) != new.get(k)}


def _shown_settings(attrs: StoreAttrs) -> dict:
    """The conversion settings a store's attributes show (stores made before settings were recorded)."""
    return {"layout": attrs.layout, "dtype": attrs.dtype, "compressor": attrs.compressor,
            "chunk_images": attrs.chunk_images, "schema_version": attrs.schema_version}


def _what_changed(out_path: str, attrs: StoreAttrs, source: dict, settings: dict) -> str:
    """'with other settings: --on-bad-row error -> skip', 'from other input: ...': what differs between
    the store and this conversion, as the user would change it."""
    old = _recorded_settings(out_path)
    if old is None:   # a store made before its settings were kept: compare what its attributes say
        old = _shown_settings(attrs)
        unknown = " (its other settings were not recorded)"
    else:
        unknown = ""
    changed = [f"{FLAGS.get(k, k)} {old.get(k, '(not given)')} -> {settings.get(k, '(not given)')}"
               for k in [*FLAGS, *sorted((set(old) | set(settings)) - set(FLAGS))]
               if old.get(k) != settings.get(k) and (k in old or not unknown)]
    inputs = _input_changes(attrs.source, source)
    parts = ([f"from other input ({'; '.join(inputs)})"] if inputs else []) + \
        ([f"with other settings ({', '.join(changed)})"] if changed else [])
    return " and ".join(parts) if parts else f"with other settings{unknown or ' (the store format changed)'}"


def _input_changes(old: dict, new: dict) -> list:
    """Per input file (or folder): what differs (a source is one file's dict or ``{"files": [...]}``):
    size, file count and content sample, wherever the files are, for a store that recorded samples
    (and a folder's listing, with every file's time, where it has not moved: its sample reads only
    some of its files); else path, size, modification time, file count and listing, as before
    samples were kept. A single file's sample is its first and last MiB: an edit in between that
    keeps its size goes unnoticed."""
    old_files, new_files = old.get("files", [old]), new.get("files", [new])
    sampled = all("sample" in f for f in old_files)    # then wherever the files are now
    if len(old_files) != len(new_files) or \
            (not sampled and [f.get("path") for f in old_files] != [f.get("path") for f in new_files]):
        return [f"inputs {', '.join(str(f.get('path')) for f in old_files)} -> {', '.join(f['path'] for f in new_files)}"]
    def keys(o, n):
        if not sampled:
            return ("size", "mtime_ns", "count", "listing")
        # a folder's sample reads 8 of its files: where it has not moved, any file's time counts too
        return ("size", "count", "sample") + (("listing",) if "listing" in o and o["path"] == n["path"] else ())
    return [f"{n['path']}: " + ", ".join(f"{SHOWN.get(k, k)} {o.get(k)} -> {n.get(k)}" for k in keys(o, n)
                                         if o.get(k) != n.get(k))
            for o, n in zip(old_files, new_files) if any(o.get(k) != n.get(k) for k in keys(o, n))]
