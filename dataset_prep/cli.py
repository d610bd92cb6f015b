"""``python -m dataset_prep``: raw product data -> item features -> RQ-VAE codes -> RecBole atomic files.

    python -m dataset_prep NAME  [--source DIR] [--data_path DIR] [--on_collision suffix]
                                 (source files -> atomic files; without a source, Instruments, Arts
                                 and Games are downloaded, Arts and Games then coded: see known.py)
    python -m dataset_prep raw   --name Scientific --reviews Industrial_and_Scientific_5.json.gz \\
                                 --meta meta_Industrial_and_Scientific.json.gz [--images DIR --require_images]
    python -m dataset_prep images --datasets Arts --meta meta_Arts_Crafts_and_Sewing.json.gz [--workers 8]
                                 (imageURLHighRes -> <out>/<Name>/images/<asin>.jpg, validated, resumable)
    python -m dataset_prep text  --datasets Scientific [--text_model PATH_OR_HUB_NAME]
    python -m dataset_prep image --datasets Scientific --images DIR [--clip_arch ViT-L-14 --clip_weights openai]
    python -m dataset_prep rqvae --datasets Scientific Office_Products --feature text_all-MiniLM-L6-v2 \\
                                 [--rqvae_config properties/prep/rqvae_cpu.yaml]
    python -m dataset_prep codes --datasets Scientific --feature text_all-MiniLM-L6-v2 [--make_unique reassign]
    python -m dataset_prep run   --datasets Scientific [--reviews R --meta M] [--images DIR]
                                 ([raw ->] text [+ image] -> rqvae -> codes -> atomic files)

``codes`` also writes the RecBole atomic files (``<data_path>/<Name>/<Name>.inter`` / ``.item`` with
``text_code`` / ``image_code`` fields) through ``dataset_prep.atomic.convert`` when the dataset has
a ``<Name>.inter.json``. Collisions are handled twice: ``--make_unique`` says how the codes stage makes
RQ-VAE codes unique (``reassign``: the paper's re-assignment to the nearest free code; ``suffix``: one
more level; ``none``: raw codes), ``--on_collision`` what the atomic conversion does with items that
still share a code (``suffix``: one more level; ``error``: refuse).

Layout under ``--out`` (default ``prep``): see ``dataset_prep/stages.py``. Input files are looked up
in ``<out>/<Name>/`` first, then in each ``--source_root`` (default ``$RECBOLE_MQL_SOURCE``, e.g.
``../shared/data``). Every stage is cached; ``--force`` redoes it.
"""

import argparse
import json
import logging
import os
import sys

from dataset_prep import stages
from dataset_prep.atomic import DEFAULT_ON_COLLISION, ON_COLLISION_CHOICES, SOURCE_ENV
from dataset_prep.collisions import DEFAULT_MAKE_UNIQUE, MAKE_UNIQUE_CHOICES
from dataset_prep.device import ACCEPTED as DEVICES, check_device, resolve_device
from dataset_prep.io import PrepError
from dataset_prep.resources import properties_dir

DEFAULT_RQVAE_CONFIG = os.path.join(properties_dir(), "prep", "rqvae_cpu.yaml")
STAGES = ("raw", "images", "text", "image", "rqvae", "codes", "run")


# --- source files -> atomic files -------------------------------------------------------------

def _add_on_collision(parser):
    parser.add_argument("--on_collision", default=DEFAULT_ON_COLLISION, choices=ON_COLLISION_CHOICES,
                        help="atomic conversion, items that share a code: suffix adds a level numbering them "
                             f"by item id, error refuses the file (default: {DEFAULT_ON_COLLISION})")


def convert_main(argv):
    """``python -m dataset_prep NAME [--source DIR]``: one dataset's source files -> its atomic files; with no
    source folder, a known dataset (Instruments, Arts, Games) is downloaded first (dataset_prep/known.py)."""
    from dataset_prep.atomic import convert, resolve_source
    from dataset_prep.download import CACHE_ENV, KNOWN_DATASETS, MIRROR_ENV
    from dataset_prep.known import PrepOptions, prepare_known_dataset

    parser = argparse.ArgumentParser(
        prog="python -m dataset_prep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages: " + ", ".join(STAGES) + " (python -m dataset_prep <stage> --help)")
    parser.add_argument("dataset", help="dataset name, e.g. Instruments")
    parser.add_argument("--source", help=f"folder with the dataset's source files (default: ${SOURCE_ENV}/<dataset>; "
                                         f"with neither, {', '.join(KNOWN_DATASETS)} are downloaded)")
    parser.add_argument("--data_path", default="dataset", help="parent folder of the atomic files (default: dataset)")
    _add_on_collision(parser)
    known = parser.add_argument_group("datasets by name (no --source)")
    known.add_argument("--data_url", help=f"mirror base URL, files at <url>/<dataset>/<file> (default: ${MIRROR_ENV})")
    known.add_argument("--cache", help=f"download and work folder (default: ${CACHE_ENV} or ~/.cache/recbole_mql/sources)")
    known.add_argument("--text_model", help="Arts/Games text encoder: hub name or folder (default: shipped MiniLM)")
    known.add_argument("--rqvae_config", help="Arts/Games RQ-VAE settings (default: properties/prep/rqvae_cpu.yaml)")
    known.add_argument("--image_meta", help="Arts/Games: Amazon 2018 meta_<Category>.json.gz, whose imageURLHighRes "
                                            "images are downloaded and coded")
    known.add_argument("--images", help="Arts/Games: folder of <asin>.jpg (instead of, or the cache of, the download)")
    known.add_argument("--clip_arch", default="ViT-L-14")
    known.add_argument("--clip_weights", default="openai")
    known.add_argument("--device", help=f"torch device of the stages: {DEVICES} (default: auto)")
    known.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")
    args = parser.parse_args(argv)
    _check_device(args.device)
    source = resolve_source(args.dataset, args.source)
    if source is not None:
        summary = convert(args.dataset, source, args.data_path, args.on_collision)
    elif args.dataset in KNOWN_DATASETS:
        options = PrepOptions(data_url=args.data_url, cache_dir=args.cache, text_model=args.text_model,
                              rqvae_config=args.rqvae_config, image_meta=args.image_meta, images=args.images,
                              clip_arch=args.clip_arch, clip_weights=args.clip_weights, device=args.device,
                              on_collision=args.on_collision, progress=args.progress)
        summary = prepare_known_dataset(args.dataset, args.data_path, options)
    else:
        raise PrepError(f"No source folder for {args.dataset}: pass --source=DIR or set {SOURCE_ENV} "
                        f"(datasets downloaded by name: {', '.join(KNOWN_DATASETS)}).")
    print(json.dumps(summary, indent=1))
    return 0


# --- the stages -------------------------------------------------------------------------------

def _common(parser):
    env_root = os.environ.get(SOURCE_ENV)
    parser.add_argument("--out", default="prep", help="work folder: <out>/<Name>/ and <out>/rqvae/ (default: prep)")
    parser.add_argument("--source_root", action="append", default=[env_root] if env_root else [],
                        help=f"folder holding <Name>/ with processed files; repeatable (default: ${SOURCE_ENV})")
    parser.add_argument("--device", default=None,
                        help=f"torch device: {DEVICES} (default: auto; RQ-VAE: the YAML's device, auto in the "
                             f"shipped files). One device and seed give one set of codes; a GPU's differ from a CPU's")
    parser.add_argument("--force", action="store_true", help="redo the stage(s) even if cached")
    parser.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's). On a machine shared with other jobs, 1 can be "
                             "several times faster: busy cores stall multi-threaded steps")


def _add_raw(sub):
    p = sub.add_parser("raw", help="raw Amazon 2018 reviews + metadata -> processed files")
    p.add_argument("--name", required=True, help="dataset name, e.g. Scientific")
    p.add_argument("--reviews", required=True, help="<Category>_5.json.gz or a ratings CSV (item,user,rating,time)")
    p.add_argument("--meta", required=True, help="meta_<Category>.json.gz")
    p.add_argument("--k", type=int, default=5, help="k-core threshold (default 5)")
    p.add_argument("--images", help="folder of <asin>.jpg (with --download_images: the download cache)")
    p.add_argument("--require_images", action="store_true", help="drop items without an image (the paper)")
    p.add_argument("--download_images", action="store_true", help="fetch the meta's image URLs (needs network)")
    _common(p)


def _add_images(sub):
    p = sub.add_parser("images", help="download item images (imageURLHighRes of Amazon metadata) -> <asin>.jpg")
    p.add_argument("--datasets", nargs="+", required=True)
    p.add_argument("--meta", help="meta_<Category>.json.gz with the image URLs (default: URLs in <Name>.item.json)")
    p.add_argument("--images", help="image folder (default: <out>/<Name>/images); valid files there are kept")
    p.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    p.add_argument("--retries", type=int, default=3, help="tries after the first, with back-off (default 3)")
    _common(p)


def _add_features(sub):
    p = sub.add_parser("text", help="item text -> <Name>.text_<encoder>.npy")
    _add_text_flags(p)
    p.add_argument("--datasets", nargs="+", required=True)
    _common(p)
    p = sub.add_parser("image", help="item images -> <Name>.image_<arch>-<weights>.npy")
    _add_image_flags(p)
    p.add_argument("--datasets", nargs="+", required=True)
    _common(p)


def _add_text_flags(p):
    p.add_argument("--text_model", help="transformers model: local folder or hub name (default: shipped MiniLM)")
    p.add_argument("--max_length", type=int, default=None, help="tokens per field (default: the model's, <= 512)")
    p.add_argument("--batch_size", type=int, default=64)


def _add_image_flags(p):
    p.add_argument("--images", help="folder of <asin>.jpg or <item id>.jpg (or <DIR>/<Name>/)")
    p.add_argument("--clip_arch", default="ViT-L-14", help="open_clip architecture, or local-dir:/folder")
    p.add_argument("--clip_weights", default="openai", help="pretrained tag or local checkpoint file")
    p.add_argument("--image_batch_size", dest="batch_size", type=int, default=32)


def _add_rqvae_flags(p):
    p.add_argument("--rqvae_config", default=DEFAULT_RQVAE_CONFIG,
                   help="RQ-VAE settings YAML (default: properties/prep/rqvae_cpu.yaml; paper: rqvae.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one RQ-VAE setting")


def _add_code_flags(p):
    p.add_argument("--make_unique", default=DEFAULT_MAKE_UNIQUE, choices=MAKE_UNIQUE_CHOICES,
                   help="how the codes stage makes RQ-VAE codes unique: reassign: the paper's re-assignment to the "
                        "nearest free code; suffix: one more level; none: keep raw codes "
                        f"(default: {DEFAULT_MAKE_UNIQUE})")
    p.add_argument("--tag", help="code file name <Name>.index_<tag>.json (default: the feature name)")
    p.add_argument("--data_path", default="dataset", help="parent folder of the atomic files (default: dataset)")
    _add_on_collision(p)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m dataset_prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    _add_raw(sub)
    _add_images(sub)
    _add_features(sub)
    p = sub.add_parser("rqvae", help="train one RQ-VAE on one or several datasets' features")
    p.add_argument("--datasets", nargs="+", required=True)
    p.add_argument("--feature", required=True, help="feature name, e.g. text_all-MiniLM-L6-v2")
    _add_rqvae_flags(p)
    _common(p)
    p = sub.add_parser("codes", help="assign collision-free codes, write code files and atomic files")
    p.add_argument("--datasets", nargs="+", required=True, help="datasets to code")
    p.add_argument("--trained_on", nargs="+", help="datasets the RQ-VAE was trained on (default: --datasets)")
    p.add_argument("--feature", required=True)
    _add_code_flags(p)
    _common(p)
    p = sub.add_parser("run", help="[raw ->] text [+ image] -> rqvae (jointly on --datasets) -> codes -> atomic files")
    p.add_argument("--datasets", nargs="+", required=True)
    p.add_argument("--reviews", help="raw interactions: start with the raw stage (one dataset only)")
    p.add_argument("--meta", help="raw metadata, with --reviews")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--require_images", action="store_true")
    p.add_argument("--download_images", action="store_true")
    _add_text_flags(p)
    p.add_argument("--images", help="image folder: the raw stage's, and runs the image modality")
    p.add_argument("--clip_arch", default="ViT-L-14")
    p.add_argument("--clip_weights", default="openai")
    p.add_argument("--image_batch_size", type=int, default=32)
    _add_rqvae_flags(p)
    _add_code_flags(p)
    _common(p)
    return parser


def rqvae_config(path, sets=None, device=None):
    """Settings from the YAML ``path`` with ``--set key=value`` items and ``--device`` on top."""
    import yaml

    from dataset_prep.rqvae import RQVAEConfig

    overrides = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise PrepError(f"--set {item!r}: expected key=value, e.g. --set epochs=50.")
        overrides[key.strip()] = yaml.safe_load(value)
    if "device" in overrides:
        check_device(overrides["device"], "--set device")
    if device:
        overrides["device"] = device
    return RQVAEConfig.from_yaml(path, overrides)


def _run(args, ws):
    """The ``run`` stage: every stage with the flags mapped onto :func:`stages.run_all`."""
    raw = None
    if args.reviews or args.meta:
        raw = {"reviews": args.reviews, "meta": args.meta, "k": args.k, "images": args.images,
               "require_images": args.require_images, "download_images": args.download_images}
    text = {"text_model": args.text_model, "max_length": args.max_length, "batch_size": args.batch_size,
            "device": args.device}
    image = None
    if args.images or args.download_images:
        image = {"images": args.images, "clip_arch": args.clip_arch, "clip_weights": args.clip_weights,
                 "batch_size": args.image_batch_size, "device": args.device}
    stages.run_all(ws, args.datasets, rqvae_config(args.rqvae_config, args.set, args.device), raw=raw, text=text,
                   image=image, make_unique=args.make_unique, tag=args.tag, data_path=args.data_path,
                   on_collision=args.on_collision, progress=args.progress, force=args.force)


def _check_device(device):
    """A ``--device`` that is unknown, or names a GPU torch does not see, fails before any stage runs."""
    if device is not None:
        resolve_device(device, "--device")


def stage_main(argv):
    """``python -m dataset_prep <stage> ...`` (argv starts with the stage); a bad input raises PrepError."""
    args = build_parser().parse_args(argv)
    _check_device(args.device)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports CPU-feature probing at INFO
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ws = stages.Workspace(args.out, args.source_root)
    if args.stage == "raw":
        stages.stage_raw(ws, args.name, args.reviews, args.meta, args.k, args.images, args.require_images,
                         args.download_images, args.force)
    elif args.stage == "images":
        for name in args.datasets:
            report = stages.stage_download_images(ws, name, args.meta, args.images, args.workers, args.retries,
                                                  progress=args.progress)
            print(json.dumps({name: {k: v for k, v in report.items() if k != "failures"}}))
    elif args.stage in ("text", "image"):
        stage = stages.stage_text if args.stage == "text" else stages.stage_image
        options = ({"text_model": args.text_model, "max_length": args.max_length} if args.stage == "text" else
                   {"images": args.images, "clip_arch": args.clip_arch, "clip_weights": args.clip_weights})
        cache = {}
        for name in args.datasets:
            stage(ws, name, cache, **options, batch_size=args.batch_size, device=args.device,
                  progress=args.progress, force=args.force)
    elif args.stage == "rqvae":
        stages.stage_rqvae(ws, args.feature, args.datasets, rqvae_config(args.rqvae_config, args.set, args.device),
                           args.progress, args.force)
    elif args.stage == "codes":
        stages.run_codes(ws, args.feature, args.trained_on or args.datasets, args.datasets, args.make_unique,
                         args.tag, args.data_path, args.on_collision, args.force, args.device)
    else:
        _run(args, ws)
    return 0


def main(argv=None):
    """``python -m dataset_prep ...``: a stage when the first argument names one, else the atomic conversion.
    A bad input prints one ``error:`` line and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if argv and argv[0] in STAGES:
            return stage_main(argv)
        return convert_main(argv)
    except PrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
