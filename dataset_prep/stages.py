"""Stages from raw product data to collision-free RQ-VAE codes and RecBole atomic files.

Each stage is a function of explicit parameters (the command line, ``dataset_prep/cli.py``, maps
its flags onto them): raw -> text [+ image] features -> RQ-VAE -> codes -> atomic files.

Layout under the work folder ``Workspace.out`` (CLI ``--out``, default ``prep``): ``<Name>/``
holds a dataset's processed files, features ``<Name>.<feature>.npy`` ([n_items, dim], row = item
id) and codes ``<Name>.index_<feature>.json`` (+ a summary JSON and a code-usage PNG);
``rqvae/<feature>__<A+B>.pt`` holds RQ-VAE checkpoints. Input files are looked up in
``<out>/<Name>/`` first, then in each of ``Workspace.source_roots`` (CLI ``--source_root``). Every
stage is cached: its output's sidecar ``.meta.json`` holds a hash of its inputs and settings, so a
re-run skips finished stages; ``force=True`` redoes them.

The torch stages (text, image, rqvae, codes) take a ``device`` (:mod:`dataset_prep.device`; None or
``auto``: CUDA where torch sees a GPU, else the CPU) and say in the log which one they used.
"""

import dataclasses
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from dataset_prep.atomic import DEFAULT_ON_COLLISION
from dataset_prep.code_tokens import format_code
from dataset_prep.collisions import DEFAULT_MAKE_UNIQUE
from dataset_prep.device import resolve_device
from dataset_prep.io import PrepError, atomic_copy, atomic_write, read_json, write_json
from dataset_prep.stage_cache import file_digest, run_stage

logger = logging.getLogger(__name__)

PROCESSED_FILES = ("inter.json", "item.json", "item2id", "user2id")


# --- where things are -------------------------------------------------------------------------

@dataclass
class Workspace:
    """The work folder the stages write to, and the folders their inputs may come from."""

    out: str = "prep"
    source_roots: list = field(default_factory=list)

    def work_dir(self, name):
        return os.path.join(self.out, name)

    def find_input(self, name, filename):
        """``<out>/<name>/<filename>``, else the first ``<source_root>/<name>/<filename>``, else None."""
        for root in [self.out] + list(self.source_roots or []):
            path = os.path.join(root, name, filename)
            if os.path.isfile(path):
                return path
        return None

    def require_input(self, name, filename, hint):
        path = self.find_input(name, filename)
        if path is None:
            roots = ", ".join([self.out] + list(self.source_roots or []))
            raise PrepError(f"{name}/{filename} not found under {roots}. {hint}")
        return path

    def checkpoint_path(self, feature, datasets):
        return os.path.join(self.out, "rqvae", f"{feature}__{'+'.join(datasets)}.pt")

    def image_folder(self, name, images=None):
        """``<images>/<name>/`` if it exists, else ``images``, else ``<out>/<name>/images`` (raw downloads)."""
        if images:
            nested = os.path.join(images, name)
            return nested if os.path.isdir(nested) else images
        return os.path.join(self.work_dir(name), "images")


def _timed(work):
    """Wrap a stage's work so that its summary records the wall time it took."""
    def run():
        start = time.perf_counter()
        summary = work() or {}
        summary["seconds"] = round(time.perf_counter() - start, 2)
        return summary
    return run


def _save_npy(path, array):
    with atomic_write(path, "wb") as f:
        np.save(f, array)


def _folder_fingerprint(folder, suffix=".jpg"):
    """Digest of the names and sizes of ``folder``'s images: a changed image set redoes the stage."""
    if not folder or not os.path.isdir(folder):
        return None
    entries = sorted((e.name, e.stat().st_size) for e in os.scandir(folder) if e.name.endswith(suffix))
    return hashlib.sha256(repr(entries).encode()).hexdigest()


# --- stages -----------------------------------------------------------------------------------

def stage_raw(ws, name, reviews, meta, k=5, images=None, require_images=False, download_images=False,
              force=False):
    """Raw Amazon reviews + metadata -> ``<out>/<name>/<name>.{inter.json,item.json,item2id,user2id}``."""
    from dataset_prep import raw_amazon

    out = ws.work_dir(name)
    image_dir = images or (os.path.join(out, "images") if download_images else None)
    outputs = [os.path.join(out, f"{name}.{suffix}") for suffix in PROCESSED_FILES]
    settings = {"k": k, "require_images": require_images, "download": download_images,
                # downloads only add to the cache folder, so only a user-given image folder is fingerprinted
                "images": _folder_fingerprint(image_dir) if require_images and not download_images else None}

    def work():
        sequences, item_meta, summary = raw_amazon.preprocess(
            reviews, meta, k, image_dir, require_images, download_images)
        raw_amazon.write_processed(out, name, sequences, item_meta)
        return summary

    summary, _ = run_stage("raw", settings, [reviews, meta], outputs, _timed(work), force)
    logger.info(f"raw {name}: " + ", ".join(f"{key}={value}" for key, value in summary.items()))
    return summary


def stage_text(ws, name, encoder_cache, text_model=None, max_length=None, batch_size=64, device=None,
               progress=True, force=False):
    """``<name>.item.json`` -> ``<out>/<name>/<name>.text_<encoder>.npy`` [n_items, dim]; returns the feature name.

    ``encoder_cache`` (a dict) keeps the loaded encoder for the next dataset of the same run.
    """
    from dataset_prep import text_features

    model_id = text_model or text_features.default_model_path()
    feature = "text_" + text_features.encoder_tag(model_id)
    items = ws.require_input(name, f"{name}.item.json", "Item text comes from `python -m dataset_prep raw`.")
    output = os.path.join(ws.work_dir(name), f"{name}.{feature}.npy")
    config_file = os.path.join(model_id, "config.json")
    device = resolve_device(device)
    settings = {"model": feature, "max_length": max_length,
                "model_config": file_digest(config_file) if os.path.isfile(config_file) else model_id}

    def work():
        if "model" not in encoder_cache:  # one load for all datasets of this run
            encoder_cache["model"] = text_features.load_text_encoder(model_id, device)
        tokenizer, model = encoder_cache["model"]
        length = max_length or text_features.default_max_length(tokenizer)
        features = text_features.text_features(text_features.item_fields(items), tokenizer, model,
                                               batch_size, length, device, progress)
        _save_npy(output, features)
        return {"items": features.shape[0], "dim": features.shape[1], "max_length": length, "device": device}

    summary, _ = run_stage("text", settings, [items], [output], _timed(work), force)
    logger.info(f"text {name}: {feature} {summary}")
    return feature


def stage_image(ws, name, encoder_cache, images=None, clip_arch="ViT-L-14", clip_weights="openai", batch_size=32,
                device=None, progress=True, force=False):
    """Item images -> ``<out>/<name>/<name>.image_<arch>-<weights>.npy`` [n_items, dim]; returns the feature name.

    Images are read from :meth:`Workspace.image_folder`.
    """
    from dataset_prep import image_features
    from dataset_prep.raw_amazon import read_id_map

    feature = "image_" + image_features.image_tag(clip_arch, clip_weights)
    items = ws.require_input(name, f"{name}.item.json", "Items come from `python -m dataset_prep raw`.")
    id_map = ws.find_input(name, f"{name}.item2id")
    folder = ws.image_folder(name, images)
    output = os.path.join(ws.work_dir(name), f"{name}.{feature}.npy")
    device = resolve_device(device)
    settings = {"arch": clip_arch, "weights": clip_weights, "images": _folder_fingerprint(folder)}

    def work():
        paths = image_features.image_paths(len(read_json(items, "Item file")), folder,
                                           read_id_map(id_map) if id_map else None)
        if "model" not in encoder_cache:
            encoder_cache["model"] = image_features.load_clip(clip_arch, clip_weights, device)
        model, preprocess = encoder_cache["model"]
        features = image_features.encode_images(paths, model, preprocess, batch_size, device, progress)
        _save_npy(output, features)
        return {"items": features.shape[0], "dim": features.shape[1], "device": device}

    inputs = [items] + ([id_map] if id_map else [])
    summary, _ = run_stage("image", settings, inputs, [output], _timed(work), force)
    logger.info(f"image {name}: {feature} {summary}")
    return feature


def stage_download_images(ws, name, meta=None, images=None, workers=8, retries=3, timeout=10.0, progress=True):
    """Download the item images of ``name`` into :meth:`Workspace.image_folder` as ``<asin>.jpg``
    (see :mod:`dataset_prep.images`); returns the download report with ``missing``: the number of items
    that have no valid image afterwards (0: the image stage can run).

    URLs come from the Amazon metadata file ``meta`` (``imageURLHighRes`` first), else from the
    ``<name>.item.json`` entries when they carry image URLs. Without any URL the report says so and
    nothing is downloaded. Offline raises :class:`PrepError`.
    """
    from dataset_prep import images as image_download
    from dataset_prep.raw_amazon import read_id_map

    items = ws.require_input(name, f"{name}.item.json", "Items come from `python -m dataset_prep raw`.")
    id_map = ws.find_input(name, f"{name}.item2id")
    item2id = read_id_map(id_map) if id_map else None
    n_items = len(read_json(items, "Item file"))
    keys = sorted(item2id, key=item2id.get) if item2id else [str(i) for i in range(n_items)]
    if meta:
        urls = image_download.urls_from_meta(meta, set(keys))
    else:
        urls = image_download.urls_from_items(items, item2id)
    folder = ws.image_folder(name, images)
    if not urls:
        report = {"requested": len(keys), "present": 0, "downloaded": 0, "failed": 0, "no_url": len(keys),
                  "failures": [], "folder": os.path.abspath(folder)}
    else:
        report = image_download.download_images({key: urls.get(key, []) for key in keys}, folder, workers, retries,
                                                timeout=timeout, progress=progress)
    report["missing"] = sum(not (os.path.isfile(path) and image_download.valid_image(path))
                            for path in (image_download.image_path(folder, key) for key in keys))
    if not urls:  # nothing to download: the folder's own images are what there is
        report["present"], report["no_url"] = len(keys) - report["missing"], report["missing"]
    logger.info(f"images {name}: {report['missing']} of {len(keys)} items without an image in {folder}")
    return report


def _features_hint(ws, feature, name):
    modality = feature.split("_", 1)[0]
    return (f"Extract them first: `python -m dataset_prep {modality} --datasets {name} --out {ws.out}` "
            f"(the feature name is <modality>_<encoder>, e.g. text_all-MiniLM-L6-v2).")


def stage_rqvae(ws, feature, datasets, config, progress=True, force=False):
    """Train one RQ-VAE (settings ``config``, an ``RQVAEConfig``) on the ``feature`` matrices of ``datasets``
    together; returns the checkpoint path.

    The cache key holds the device ``config.device`` resolves to (``auto`` -> ``cpu`` or ``cuda``): a GPU
    and a CPU train different codes, and a CPU checkpoint made before ``auto`` existed stays valid.
    """
    from dataset_prep import rqvae

    config = dataclasses.replace(config, device=resolve_device(config.device, "RQ-VAE setting device"))
    paths = [ws.require_input(name, f"{name}.{feature}.npy", _features_hint(ws, feature, name))
             for name in datasets]
    checkpoint = ws.checkpoint_path(feature, datasets)
    history_path = checkpoint[:-len(".pt")] + ".history.json"

    def work():
        arrays = [np.load(p) for p in paths]
        model, history = rqvae.train_rqvae(rqvae.stack_features(arrays, datasets), config, progress)
        rqvae.save_checkpoint(checkpoint, model, {"datasets": list(datasets), "feature": feature,
                                                  "items": [len(a) for a in arrays]})
        write_json(history_path, history)
        last = history["epochs"][-1] if history["epochs"] else {}
        return {"items": sum(len(a) for a in arrays), "epochs": config.epochs, "device": config.device,
                "final_loss": float(last.get("loss", "nan")), "init_collision_rate": history["init_collision_rate"],
                "best_epoch": history["best_epoch"], "best_collision_rate": history["best_collision_rate"]}

    settings = {"config": config.as_dict(), "datasets": list(datasets), "feature": feature}
    summary, _ = run_stage("rqvae", settings, paths, [checkpoint, history_path], _timed(work), force)
    logger.info(f"rqvae {feature} on {'+'.join(datasets)}: {summary}")
    return checkpoint


def write_code_file(path, codes, modality):
    """``{"<item id>": ["<a_12>", "<b_3>", ...]}`` from codes [n, levels] (row = item id)."""
    write_json(path, {str(item): format_code(modality, row) for item, row in enumerate(codes.tolist())})


def assign_codes(model, features, make_unique=DEFAULT_MAKE_UNIQUE):
    """Codes of ``features`` [n, dim] made unique by ``make_unique`` -> (codes [n, levels(+1)], summary).

    The nearest codes are computed on the model's device; the re-assignment is a sequential search
    over code tuples and runs on the host, on the CPU arrays they come back as.
    """
    import torch

    from dataset_prep import collisions

    codes, residuals = model.encode_codes(torch.as_tensor(features, dtype=torch.float32))
    size = model.config.codebook_size
    summary = {"before": collisions.code_summary(codes, size)}
    codes, moved = collisions.make_unique(codes, residuals, model.codebook_arrays(), make_unique)
    if make_unique == "reassign":
        summary["moved_items"] = len(moved)
    summary["after"] = collisions.code_summary(codes, size)
    return codes, summary


def stage_codes(ws, feature, checkpoint, name, make_unique=DEFAULT_MAKE_UNIQUE, tag=None, force=False,
                device=None):
    """Codes of one dataset from a (possibly joint) RQ-VAE -> ``<out>/<name>/<name>.index_<tag>.json``
    (``tag`` defaults to the feature name), the items encoded on ``device``."""
    from dataset_prep import collisions, rqvae

    device = resolve_device(device)
    modality = feature.split("_", 1)[0]
    if modality not in ("text", "image"):
        raise PrepError(f"--feature {feature!r} must start with text_ or image_ (the feature file's name).")
    features_path = ws.require_input(name, f"{name}.{feature}.npy", _features_hint(ws, feature, name))
    tag = tag or feature
    folder = ws.work_dir(name)
    # convert() reads every <name>.index*.json as a code file: the summary (which carries the stage
    # sidecar) and the plot are named so that they never match.
    outputs = [os.path.join(folder, f"{name}.codes_{tag}.summary.json"),
               os.path.join(folder, f"{name}.index_{tag}.json"),
               os.path.join(folder, f"{name}.codes_{tag}.usage.png")]

    def work():
        logger.info(f"codes {name}: encoding on {device}")
        model, _ = rqvae.load_checkpoint(checkpoint, device)
        codes, summary = assign_codes(model, np.load(features_path), make_unique)
        write_code_file(outputs[1], codes, modality)
        write_json(outputs[0], summary)
        collisions.plot_code_usage(codes, model.config.codebook_size, outputs[2],
                                   f"{name} {feature} codes ({make_unique})")
        return summary

    settings = {"rule": make_unique, "modality": modality}  # key names kept: existing caches stay valid
    if device != "cpu":  # a GPU may round a near tie the other way; CPU keys stay those of before
        settings["device"] = device
    summary, _ = run_stage("codes", settings, [checkpoint, features_path], outputs, _timed(work), force)
    before, after = summary["before"], summary["after"]
    logger.info(f"codes {name}: collision rate {before['collision_rate']:.4f} -> {after['collision_rate']:.4f}, "
                f"per-level perplexity {[round(l['perplexity'], 1) for l in after['levels']]} ({outputs[1]})")
    return summary


def stage_processed_files(ws, name):
    """Copy ``name``'s processed files from a source root into ``<out>/<name>/`` (once, or when changed),
    so that the code files and the interactions sit in one folder for the atomic conversion."""
    for suffix in PROCESSED_FILES:
        target = os.path.join(ws.work_dir(name), f"{name}.{suffix}")
        source = ws.find_input(name, f"{name}.{suffix}")
        if source is None or os.path.abspath(source) == os.path.abspath(target):
            continue
        if not os.path.isfile(target) or file_digest(source) != file_digest(target):
            atomic_copy(source, target)


def stage_atomic(ws, name, data_path="dataset", on_collision=DEFAULT_ON_COLLISION, force=False):
    """``<out>/<name>/`` (interactions + code files) -> RecBole atomic files in ``<data_path>/<name>/``."""
    from dataset_prep.atomic import convert

    stage_processed_files(ws, name)
    folder = ws.work_dir(name)
    inter = os.path.join(folder, f"{name}.inter.json")
    if not os.path.isfile(inter):
        logger.warning(f"atomic {name}: no {name}.inter.json in {folder} or the source roots; code files "
                       f"written, atomic files skipped")
        return None
    # exactly what convert() reads: interactions, item text, every code file
    inputs = [os.path.join(folder, f) for f in sorted(os.listdir(folder))
              if f in (f"{name}.inter.json", f"{name}.item.json")
              or (f.startswith(f"{name}.index") and f.endswith(".json"))]
    outputs = [os.path.join(data_path, name, f"{name}.{ext}") for ext in ("inter", "item")]

    def work():
        return convert(name, folder, data_path, on_collision)

    summary, _ = run_stage("atomic", {"rule": on_collision}, inputs, outputs, _timed(work), force)
    logger.info(f"atomic {name}: {summary}")
    return summary


# --- several stages ---------------------------------------------------------------------------

def run_codes(ws, feature, trained_on, datasets, make_unique=DEFAULT_MAKE_UNIQUE, tag=None, data_path="dataset",
              on_collision=DEFAULT_ON_COLLISION, force=False, device=None):
    """Codes of ``datasets`` from the RQ-VAE trained on ``trained_on``, then their atomic files."""
    checkpoint = ws.checkpoint_path(feature, trained_on)
    if not os.path.isfile(checkpoint):
        raise PrepError(f"No RQ-VAE checkpoint {checkpoint}: run `python -m dataset_prep rqvae --datasets "
                        f"{' '.join(trained_on)} --feature {feature}` first (same --out).")
    summaries = {name: stage_codes(ws, feature, checkpoint, name, make_unique, tag, force, device)
                 for name in datasets}
    for name in datasets:
        stage_atomic(ws, name, data_path, on_collision, force)
    return summaries


def run_all(ws, datasets, rqvae_config, raw=None, text=None, image=None, make_unique=DEFAULT_MAKE_UNIQUE,
            tag=None, data_path="dataset", on_collision=DEFAULT_ON_COLLISION, progress=True, force=False):
    """Every stage for ``datasets``: [raw,] features per modality, one joint RQ-VAE per modality, codes,
    atomic files.

    ``raw``: keyword arguments of :func:`stage_raw` but the name (``reviews``, ``meta``, ...), or None to
    start from processed files; ``text`` / ``image``: those of :func:`stage_text` / :func:`stage_image`
    (``image=None``: no image modality). Codes are encoded on the RQ-VAE's device (``rqvae_config.device``).
    """
    if raw is not None:
        if len(datasets) != 1 or not (raw.get("reviews") and raw.get("meta")):
            raise PrepError("run --reviews/--meta prepares one dataset: pass both files and one --datasets name.")
        stage_raw(ws, datasets[0], **raw, force=force)
    text_cache, image_cache, features = {}, {}, []
    features.append({name: stage_text(ws, name, text_cache, **(text or {}), progress=progress, force=force)
                     for name in datasets})
    if image is not None:
        features.append({name: stage_image(ws, name, image_cache, **image, progress=progress, force=force)
                         for name in datasets})
    for per_dataset in features:
        feature = next(iter(per_dataset.values()))
        checkpoint = stage_rqvae(ws, feature, datasets, rqvae_config, progress, force)
        for name in datasets:
            stage_codes(ws, feature, checkpoint, name, make_unique, tag, force, rqvae_config.device)
    for name in datasets:
        stage_atomic(ws, name, data_path, on_collision, force)
