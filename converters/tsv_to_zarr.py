"""Convert region features (TSVs, HDF5 caches, folders of .npz or .npy) into chunked Zarr v3 feature stores.

    python converters/tsv_to_zarr.py [--dataset gqa]
        converts the task's feature files: for GQA the specification's two, data/GQA-Features/
        vg_gqa_obj36.tsv and gqa_testdev_obj36.tsv, into data/GQA-Cache/trainval.zarr and testdev.zarr
    python converters/tsv_to_zarr.py INPUT [INPUT ...] --out OUT.zarr [--workers N] [--dtype float16|float32]
        [--compressor none|zstd|blosc] [--chunk_images 32] [--format auto|tsv|hdf5|npz|npy]
        [--ids ID_MAP.pkl] [--layout auto|obj36|anderson] [--feature_dim N] [--on-bad-row error|skip]
        [--overwrite]
        converts the given input(s) into one store, images in input order (e.g. the parts of a
        feature file split over several .tsv.N files)

An INPUT is a features TSV (obj36 or Anderson layout); an HDF5 cache, the specification's or
hengyuan-hu's 36-box one (trainval36.hdf5 beside trainval36_img2idx.pkl, train36.hdf5 beside
train36_imgid2idx.pkl) or ban-vqa's adaptive one (train.hdf5 with pos_boxes, beside
train_imgid2idx.pkl), its id map found beside it or given with --ids; a folder of .npz files from
bottom-up-attention.pytorch (x [boxes, 2048]) or MCAN (x transposed, .jpg.npz); or a folder of MMF
<image>.npy files with their <image>_info.npy. The layout is recognised from the input (--format
overrides) and named in the summary; so is what was derived (an HDF5 cache's image sizes, from
image_bb and spatial_features). Pickles in these files (id maps, info) are read without running
anything they name. With --dataset vqa2, one image under two spellings of its id
(COCO_train2014_000000458752 and 458752) is refused, as a repeated id is.

Runs on all cores by default. An interrupted conversion (Ctrl-C, kill -9) resumes when the same
command runs again; --overwrite starts over. With --on-bad-row skip, bad images are left out and
listed in OUT.zarr.bad_rows.json; a skip that would drop more images than it keeps fails. A TSV's
feature size per box is what most of the first rows agree on, or --feature_dim. Errors are one
line on stderr, exit status 1. The library code is butd/features/convert/ and butd/features/inputs/.
"""
import logging
import sys
import warnings

from butd.cli import ArgumentParser, Bounded, description, run
from butd.features import schema
from butd.features.convert import BAD_ROW_MODES, DEFAULT_CHUNK_IMAGES, convert, convert_stores
from butd.features.inputs import FORMATS
from butd.tasks import TASK_NAMES, get_task
from butd.training.config import DataConfig


def parse_args(argv=None):
    p = ArgumentParser(description=description(__doc__, 3))
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="TSV(s), HDF5 cache(s) or folder(s) of .npz/.npy to convert into one store "
                        "(default: the task's TSVs)")
    p.add_argument("--out", help="the store to write (required with an INPUT)")
    p.add_argument("--dataset", default="gqa", choices=TASK_NAMES, help="whose feature files to convert")
    p.add_argument("--data", default="data/", help="where downloaded data is located")
    p.add_argument("--features", default=None, help="the task's feature files, when no INPUT is given "
                   "(default <data>/GQA-Features, VQA2-Features or NLVR2-Features)")
    p.add_argument("--cache", default=None, help="the dataset's feature stores and question cache: the stores are written "
                   "there when no INPUT is given "
                   "(default <data>/GQA-Cache, VQA2-Cache or NLVR2-Cache)")
    p.add_argument("--workers", type=Bounded(int, low=1), default=None, help="conversion processes (default: all cores)")
    p.add_argument("--dtype", choices=schema.FEATURE_DTYPES, default="float16", help="the stored features' dtype")
    p.add_argument("--compressor", choices=schema.COMPRESSORS, default="none",
                   help="none keeps chunks memory-mappable (fastest to read); zstd and blosc make smaller stores")
    p.add_argument("--chunk_images", type=Bounded(int, low=1), default=DEFAULT_CHUNK_IMAGES, help="images per chunk")
    p.add_argument("--format", choices=("auto",) + FORMATS, default="auto",
                   help="the input's format (auto: recognised from the input)")
    p.add_argument("--ids", default=None, help="an HDF5 cache's id map, where it is not beside the cache")
    p.add_argument("--layout", choices=("auto",) + schema.TSV_LAYOUTS, default="auto",
                   help="a TSV's layout (auto: from its field count)")
    p.add_argument("--feature_dim", type=Bounded(int, low=1), default=None,
                   help="feature values per box every row must have (default: what most of the first rows have)")
    p.add_argument("--on-bad-row", dest="on_bad_row", choices=BAD_ROW_MODES, default="error",
                   help="error: stop at a bad image, naming it; skip: leave bad images out and list them in "
                        "OUT.zarr.bad_rows.json")
    p.add_argument("--overwrite", action="store_true", help="delete an existing store and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.inputs and not args.out:
        p.error("--out is required when an INPUT is given")
    if args.out and not args.inputs:
        p.error("--out needs an INPUT to convert")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    options = dict(layout=None if args.layout == "auto" else args.layout, dtype=args.dtype,
                   compressor=args.compressor, chunk_images=args.chunk_images, workers=args.workers,
                   on_bad_row=args.on_bad_row, overwrite=args.overwrite, progress=not args.quiet,
                   feature_dim=args.feature_dim)
    try:
        if args.inputs:
            print(convert(args.inputs, args.out, format=None if args.format == "auto" else args.format, ids=args.ids,
                          image_key=get_task(args.dataset).image_key, **options))
        else:
            paths = DataConfig(dataset=args.dataset, data=args.data).paths()
            summaries = convert_stores(get_task(args.dataset), args.features or paths["features"],
                                       args.cache or paths["cache"], **options)
            for summary in summaries.values():
                print(summary)
    except RuntimeError as e:          # a store that fails verification: what to do is in the message
        raise ValueError(str(e)) from None
    except KeyboardInterrupt:
        # zarr's event loop would log each of its pending tasks as "destroyed" at exit, and the
        # coroutines it was running report "Event loop is closed" as they are collected: say ours only
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        sys.unraisablehook = lambda unraisable: None
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
        print("\ninterrupted: the chunks already written are kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run(main))   # a user's error (a missing input, a bad row, no space): one line, exit status 1
