"""Stages from raw product data to collision-free RQ-VAE codes and RecBole atomic files.

    python -m dataset_prep raw   --name Scientific --reviews Industrial_and_Scientific_5.json.gz \\
                                 --meta meta_Industrial_and_Scientific.json.gz [--images DIR --require_images]
    python -m dataset_prep text  --datasets Scientific [--text_model PATH_OR_HUB_NAME]
    python -m dataset_prep image --datasets Scientific --images DIR [--clip_arch ViT-L-14 --clip_weights openai]
    python -m dataset_prep rqvae --datasets Scientific Office_Products --feature text_all-MiniLM-L6-v2 \\
                                 [--rqvae_config properties/prep/rqvae_cpu.yaml]
    python -m dataset_prep codes --datasets Scientific --feature text_all-MiniLM-L6-v2 [--collisions reassign]
    python -m dataset_prep run   --datasets Scientific [--reviews R --meta M] [--images DIR]
                                 ([raw ->] text [+ image] -> rqvae -> codes -> atomic files)

``codes`` also writes the RecBole atomic files (``<data_path>/<Name>/<Name>.inter`` / ``.item`` with
``text_code`` / ``image_code`` fields) through ``dataset_prep.atomic.convert`` when the dataset has
a ``<Name>.inter.json``.

Layout under ``--out`` (default ``prep``): ``<Name>/`` holds a dataset's processed files, features
``<Name>.<feature>.npy`` ([n_items, dim], row = item id) and codes ``<Name>.index_<feature>.json``
(+ a summary JSON and a code-usage PNG); ``rqvae/<feature>__<A+B>.pt`` holds RQ-VAE checkpoints.
Input files are looked up in ``<out>/<Name>/`` first, then in each ``--source_root`` (default
``$RECBOLE_MQL_SOURCE``, e.g. ``../shared/data``). Every stage is cached: its output's sidecar
``.meta.json`` holds a hash of its inputs and settings, so a re-run skips finished stages;
``--force`` redoes them.
"""

import argparse
import logging
import os
import shutil
import time

import numpy as np

from dataset_prep.io import PrepError, read_json, write_json
from dataset_prep.stage_cache import file_digest, run_stage

logger = logging.getLogger(__name__)

DEFAULT_RQVAE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "properties", "prep", "rqvae_cpu.yaml")
PROCESSED_FILES = ("inter.json", "item.json", "item2id", "user2id")


# --- where things are -------------------------------------------------------------------------

def work_dir(args, name):
    return os.path.join(args.out, name)


def find_input(args, name, filename):
    """``<out>/<name>/<filename>``, else the first ``<source_root>/<name>/<filename>``, else None."""
    for root in [args.out] + list(args.source_root or []):
        path = os.path.join(root, name, filename)
        if os.path.isfile(path):
            return path
    return None


def require_input(args, name, filename, hint):
    path = find_input(args, name, filename)
    if path is None:
        roots = ", ".join([args.out] + list(args.source_root or []))
        raise PrepError(f"{name}/{filename} not found under {roots}. {hint}")
    return path


def checkpoint_path(args, feature, datasets):
    return os.path.join(args.out, "rqvae", f"{feature}__{'+'.join(datasets)}.pt")


def _timed(work):
    """Wrap a stage's work so that its summary records the wall time it took."""
    def run():
        start = time.perf_counter()
        summary = work() or {}
        summary["seconds"] = round(time.perf_counter() - start, 2)
        return summary
    return run


def _save_npy(path, array):
    from dataset_prep.io import atomic_write

    with atomic_write(path, "wb") as f:
        np.save(f, array)


def _folder_fingerprint(folder, suffix=".jpg"):
    """Digest of the names and sizes of ``folder``'s images: a changed image set redoes the stage."""
    if not folder or not os.path.isdir(folder):
        return None
    entries = sorted((e.name, e.stat().st_size) for e in os.scandir(folder) if e.name.endswith(suffix))
    import hashlib

    return hashlib.sha256(repr(entries).encode()).hexdigest()


# --- stages -----------------------------------------------------------------------------------

def stage_raw(args):
    """Raw Amazon reviews + metadata -> ``<out>/<name>/<name>.{inter.json,item.json,item2id,user2id}``."""
    from dataset_prep import raw_amazon

    out = work_dir(args, args.name)
    image_dir = args.images or (os.path.join(out, "images") if args.download_images else None)
    outputs = [os.path.join(out, f"{args.name}.{suffix}") for suffix in PROCESSED_FILES]
    settings = {"k": args.k, "require_images": args.require_images, "download": args.download_images,
                # downloads only add to the cache folder, so only a user-given image folder is fingerprinted
                "images": _folder_fingerprint(image_dir) if args.require_images and not args.download_images else None}

    def work():
        sequences, meta, summary = raw_amazon.preprocess(
            args.reviews, args.meta, args.k, image_dir, args.require_images, args.download_images)
        raw_amazon.write_processed(out, args.name, sequences, meta)
        return summary

    summary, _ = run_stage("raw", settings, [args.reviews, args.meta], outputs, _timed(work), args.force)
    logger.info(f"raw {args.name}: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return summary


def stage_text(args, name, encoder_cache):
    """``<name>.item.json`` -> ``<out>/<name>/<name>.text_<encoder>.npy`` [n_items, dim]; returns the feature name."""
    from dataset_prep import text_features

    model_id = args.text_model or text_features.default_model_path()
    feature = "text_" + text_features.encoder_tag(model_id)
    items = require_input(args, name, f"{name}.item.json", "Item text comes from `python -m dataset_prep raw`.")
    output = os.path.join(work_dir(args, name), f"{name}.{feature}.npy")
    config_file = os.path.join(model_id, "config.json")
    device = args.device or "cpu"
    settings = {"model": feature, "max_length": args.max_length,
                "model_config": file_digest(config_file) if os.path.isfile(config_file) else model_id}

    def work():
        if "model" not in encoder_cache:  # one load for all datasets of this run
            encoder_cache["model"] = text_features.load_text_encoder(model_id, device)
        tokenizer, model = encoder_cache["model"]
        max_length = args.max_length or text_features.default_max_length(tokenizer)
        features = text_features.text_features(text_features.item_fields(items), tokenizer, model,
                                               args.batch_size, max_length, device, args.progress)
        _save_npy(output, features)
        return {"items": features.shape[0], "dim": features.shape[1], "max_length": max_length}

    summary, _ = run_stage("text", settings, [items], [output], _timed(work), args.force)
    logger.info(f"text {name}: {feature} {summary}")
    return feature


def image_folder(args, name):
    """``--images/<name>/`` if it exists, else ``--images``, else ``<out>/<name>/images`` (raw downloads)."""
    if args.images:
        nested = os.path.join(args.images, name)
        return nested if os.path.isdir(nested) else args.images
    return os.path.join(work_dir(args, name), "images")


def stage_image(args, name, encoder_cache):
    """Item images -> ``<out>/<name>/<name>.image_<arch>-<weights>.npy`` [n_items, dim]; returns the feature name."""
    from dataset_prep import image_features
    from dataset_prep.raw_amazon import read_id_map

    feature = "image_" + image_features.image_tag(args.clip_arch, args.clip_weights)
    items = require_input(args, name, f"{name}.item.json", "Items come from `python -m dataset_prep raw`.")
    id_map = find_input(args, name, f"{name}.item2id")
    folder = image_folder(args, name)
    output = os.path.join(work_dir(args, name), f"{name}.{feature}.npy")
    device = args.device or "cpu"
    settings = {"arch": args.clip_arch, "weights": args.clip_weights, "images": _folder_fingerprint(folder)}

    def work():
        paths = image_features.image_paths(len(read_json(items, "Item file")), folder,
                                           read_id_map(id_map) if id_map else None)
        if "model" not in encoder_cache:
            encoder_cache["model"] = image_features.load_clip(args.clip_arch, args.clip_weights, device)
        model, preprocess = encoder_cache["model"]
        features = image_features.encode_images(paths, model, preprocess, args.batch_size, device, args.progress)
        _save_npy(output, features)
        return {"items": features.shape[0], "dim": features.shape[1]}

    inputs = [items] + ([id_map] if id_map else [])
    summary, _ = run_stage("image", settings, inputs, [output], _timed(work), args.force)
    logger.info(f"image {name}: {feature} {summary}")
    return feature


def _features_hint(args, feature, name):
    modality = feature.split("_", 1)[0]
    return (f"Extract them first: `python -m dataset_prep {modality} --datasets {name} --out {args.out}` "
            f"(the feature name is <modality>_<encoder>, e.g. text_all-MiniLM-L6-v2).")


def rqvae_config(args):
    """Settings from ``--rqvae_config`` with ``--set key=value`` and ``--device`` on top."""
    import yaml

    from dataset_prep.rqvae import RQVAEConfig

    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise PrepError(f"--set {item!r}: expected key=value, e.g. --set epochs=50.")
        overrides[key.strip()] = yaml.safe_load(value)
    if args.device:
        overrides["device"] = args.device
    return RQVAEConfig.from_yaml(args.rqvae_config, overrides)


def stage_rqvae(args, feature, datasets):
    """Train one RQ-VAE on the ``feature`` matrices of ``datasets`` together; returns the checkpoint path."""
    from dataset_prep import rqvae

    paths = [require_input(args, name, f"{name}.{feature}.npy", _features_hint(args, feature, name))
             for name in datasets]
    config = rqvae_config(args)
    checkpoint = checkpoint_path(args, feature, datasets)
    history_path = checkpoint[:-len(".pt")] + ".history.json"

    def work():
        arrays = [np.load(p) for p in paths]
        model, history = rqvae.train_rqvae(rqvae.stack_features(arrays, datasets), config, args.progress)
        rqvae.save_checkpoint(checkpoint, model, {"datasets": list(datasets), "feature": feature,
                                                  "items": [len(a) for a in arrays]})
        write_json(history_path, history)
        last = history["epochs"][-1] if history["epochs"] else {}
        return {"items": sum(len(a) for a in arrays), "epochs": config.epochs,
                "final_loss": float(last.get("loss", "nan")), "init_collision_rate": history["init_collision_rate"],
                "best_epoch": history["best_epoch"], "best_collision_rate": history["best_collision_rate"]}

    settings = {"config": config.as_dict(), "datasets": list(datasets), "feature": feature}
    summary, _ = run_stage("rqvae", settings, paths, [checkpoint, history_path], _timed(work), args.force)
    logger.info(f"rqvae {feature} on {'+'.join(datasets)}: {summary}")
    return checkpoint


def write_code_file(path, codes, modality):
    """``{"<item id>": ["<a_12>", "<b_3>", ...]}``: letters a, b, c, ... per level; upper-case for images."""
    letters = [chr(ord("a") + level) for level in range(codes.shape[1])]
    if modality == "image":
        letters = [letter.upper() for letter in letters]
    write_json(path, {str(item): [f"<{letters[level]}_{int(c)}>" for level, c in enumerate(row)]
                      for item, row in enumerate(codes.tolist())})


def assign_codes(model, features, rule):
    """Codes of ``features`` [n, dim] made unique by ``rule`` -> (codes [n, levels(+1)], summary)."""
    import torch

    from dataset_prep import collisions

    codes, residuals = model.encode_codes(torch.as_tensor(features, dtype=torch.float32))
    size = model.config.codebook_size
    summary = {"before": collisions.code_summary(codes, size)}
    if rule == "reassign":
        codes, moved = collisions.reassign(codes, residuals, model.codebook_arrays())
        summary["moved_items"] = len(moved)
    elif rule == "suffix":
        codes = collisions.add_suffix(codes, residuals, model.codebook_arrays())
    summary["after"] = collisions.code_summary(codes, size)
    return codes, summary


def stage_codes(args, feature, checkpoint, name):
    """Codes of one dataset from a (possibly joint) RQ-VAE -> ``<out>/<name>/<name>.index_<tag>.json``."""
    from dataset_prep import collisions, rqvae

    modality = feature.split("_", 1)[0]
    if modality not in ("text", "image"):
        raise PrepError(f"--feature {feature!r} must start with text_ or image_ (the feature file's name).")
    features_path = require_input(args, name, f"{name}.{feature}.npy", _features_hint(args, feature, name))
    tag = args.tag or feature
    folder = work_dir(args, name)
    # convert() reads every <name>.index*.json as a code file: the summary (which carries the stage
    # sidecar) and the plot are named so that they never match.
    outputs = [os.path.join(folder, f"{name}.codes_{tag}.summary.json"),
               os.path.join(folder, f"{name}.index_{tag}.json"),
               os.path.join(folder, f"{name}.codes_{tag}.usage.png")]

    def work():
        model, _ = rqvae.load_checkpoint(checkpoint)
        codes, summary = assign_codes(model, np.load(features_path), args.collisions)
        write_code_file(outputs[1], codes, modality)
        write_json(outputs[0], summary)
        collisions.plot_code_usage(codes, model.config.codebook_size, outputs[2],
                                   f"{name} {feature} codes ({args.collisions})")
        return summary

    settings = {"rule": args.collisions, "modality": modality}
    summary, _ = run_stage("codes", settings, [checkpoint, features_path], outputs, _timed(work), args.force)
    before, after = summary["before"], summary["after"]
    logger.info(f"codes {name}: collision rate {before['collision_rate']:.4f} -> {after['collision_rate']:.4f}, "
                f"per-level perplexity {[round(l['perplexity'], 1) for l in after['levels']]} ({outputs[1]})")
    return summary


def stage_processed_files(args, name):
    """Copy ``name``'s processed files from a source root into ``<out>/<name>/`` (once, or when changed),
    so that the code files and the interactions sit in one folder for the atomic conversion."""
    for suffix in PROCESSED_FILES:
        target = os.path.join(work_dir(args, name), f"{name}.{suffix}")
        source = find_input(args, name, f"{name}.{suffix}")
        if source is None or os.path.abspath(source) == os.path.abspath(target):
            continue
        if not os.path.isfile(target) or file_digest(source) != file_digest(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(source, target + ".tmp")
            os.replace(target + ".tmp", target)


def stage_atomic(args, name):
    """``<out>/<name>/`` (interactions + code files) -> RecBole atomic files in ``<data_path>/<name>/``."""
    from dataset_prep.atomic import convert

    stage_processed_files(args, name)
    folder = work_dir(args, name)
    inter = os.path.join(folder, f"{name}.inter.json")
    if not os.path.isfile(inter):
        logger.warning(f"atomic {name}: no {name}.inter.json in {folder} or the source roots; code files "
                       f"written, atomic files skipped")
        return None
    # exactly what convert() reads: interactions, item text, every code file
    inputs = [os.path.join(folder, f) for f in sorted(os.listdir(folder))
              if f in (f"{name}.inter.json", f"{name}.item.json")
              or (f.startswith(f"{name}.index") and f.endswith(".json"))]
    outputs = [os.path.join(args.data_path, name, f"{name}.{ext}") for ext in ("inter", "item")]

    def work():
        return convert(name, folder, args.data_path, args.collision_rule)

    summary, _ = run_stage("atomic", {"rule": args.collision_rule}, inputs, outputs, _timed(work), args.force)
    logger.info(f"atomic {name}: {summary}")
    return summary


# --- command line -----------------------------------------------------------------------------

def _common(parser):
    from dataset_prep.atomic import SOURCE_ENV

    env_root = os.environ.get(SOURCE_ENV)
    parser.add_argument("--out", default="prep", help="work folder: <out>/<Name>/ and <out>/rqvae/ (default: prep)")
    parser.add_argument("--source_root", action="append", default=[env_root] if env_root else [],
                        help=f"folder holding <Name>/ with processed files; repeatable (default: ${SOURCE_ENV})")
    parser.add_argument("--device", default=None, help="torch device (default: cpu; RQ-VAE: the YAML's)")
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
    p.add_argument("--collisions", default="reassign", choices=["reassign", "suffix", "none"],
                   help="reassign: the paper's re-assignment; suffix: one more level; none: keep raw codes")
    p.add_argument("--tag", help="code file name <Name>.index_<tag>.json (default: the feature name)")
    p.add_argument("--data_path", default="dataset", help="parent folder of the atomic files (default: dataset)")
    p.add_argument("--collision_rule", default="error", choices=["error", "suffix"],
                   help="atomic conversion's rule for codes that still collide (default: error)")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m dataset_prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    _add_raw(sub)
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


def run_codes(args, feature, trained_on, datasets):
    checkpoint = checkpoint_path(args, feature, trained_on)
    if not os.path.isfile(checkpoint):
        raise PrepError(f"No RQ-VAE checkpoint {checkpoint}: run `python -m dataset_prep rqvae --datasets "
                        f"{' '.join(trained_on)} --feature {feature}` first (same --out).")
    summaries = {name: stage_codes(args, feature, checkpoint, name) for name in datasets}
    for name in datasets:
        stage_atomic(args, name)
    return summaries


def run_all(args):
    """Every stage for ``args.datasets``: [raw,] features per modality, one joint RQ-VAE per modality, codes."""
    if args.reviews or args.meta:
        if len(args.datasets) != 1 or not (args.reviews and args.meta):
            raise PrepError("run --reviews/--meta prepares one dataset: pass both files and one --datasets name.")
        stage_raw(argparse.Namespace(**{**vars(args), "name": args.datasets[0]}))
    text_cache, image_cache, features = {}, {}, []
    features.append({name: stage_text(args, name, text_cache) for name in args.datasets})
    if args.images or args.download_images:
        image_args = argparse.Namespace(**{**vars(args), "batch_size": args.image_batch_size})
        features.append({name: stage_image(image_args, name, image_cache) for name in args.datasets})
    for per_dataset in features:
        feature = next(iter(per_dataset.values()))
        checkpoint = stage_rqvae(args, feature, args.datasets)
        for name in args.datasets:
            stage_codes(args, feature, checkpoint, name)
    for name in args.datasets:
        stage_atomic(args, name)


def main(argv):
    """Entry point of the pipeline sub-commands (``python -m dataset_prep <stage> ...``)."""
    args = build_parser().parse_args(argv)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports CPU-feature probing at INFO
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.stage == "raw":
        stage_raw(args)
    elif args.stage == "text":
        cache = {}
        for name in args.datasets:
            stage_text(args, name, cache)
    elif args.stage == "image":
        cache = {}
        for name in args.datasets:
            stage_image(args, name, cache)
    elif args.stage == "rqvae":
        stage_rqvae(args, args.feature, args.datasets)
    elif args.stage == "codes":
        run_codes(args, args.feature, args.trained_on or args.datasets, args.datasets)
    else:
        run_all(args)
    return 0
