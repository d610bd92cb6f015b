"""Datasets by name: with no local source, a known dataset is downloaded and made into atomic files.

``Instruments`` is published with its codes: download (:mod:`dataset_prep.download`), then the
atomic conversion. ``Arts`` and ``Games`` are published without codes (interactions, item text,
ASINs): download, then the stages of :mod:`dataset_prep.stages` make them, all under the cache
folder (``<cache>/prep/<Name>/``, every stage cached and resumable):

1. ``text``: item text -> features with the configured encoder (default: the shipped MiniLM);
2. ``rqvae`` + ``codes``: an RQ-VAE on those features, collision-free text codes;
3. images, when image URLs are known (``image_meta``: the Amazon 2018 ``meta_<Category>.json.gz``,
   whose ``imageURLHighRes`` the authors use; or URLs inside the item file) or a folder of
   ``<asin>.jpg`` is given (``images``): ``images`` (download, :mod:`dataset_prep.images`), then
   ``image`` (open_clip features), ``rqvae`` + ``codes`` for the image modality. Only when every item
   has a valid image: otherwise the dataset keeps its text codes alone (the report names the
   missing images) and the tasks that need images are refused or skipped as for any text-only
   dataset;
4. ``atomic``: the RecBole atomic files.
"""

import logging
import os
from dataclasses import dataclass, fields

from dataset_prep import stages
from dataset_prep.atomic import DEFAULT_ON_COLLISION, atomic_files_exist, ensure_atomic_files, resolve_source
from dataset_prep.collisions import DEFAULT_MAKE_UNIQUE
from dataset_prep.download import KNOWN_DATASETS, default_cache, download_dataset
from dataset_prep.io import PrepError
from dataset_prep.resources import properties_dir

logger = logging.getLogger(__name__)

# config key of run_recbole_mql -> PrepOptions field (properties/overall.yaml documents the keys)
CONFIG_KEYS = {
    "data_url": "data_url", "data_cache": "cache_dir", "prep_text_model": "text_model",
    "prep_rqvae_config": "rqvae_config", "prep_image_meta": "image_meta", "prep_images": "images",
    "prep_clip_arch": "clip_arch", "prep_clip_weights": "clip_weights",
}


def default_rqvae_config():
    return os.path.join(properties_dir(), "prep", "rqvae_cpu.yaml")


@dataclass
class PrepOptions:
    """How a dataset by name is fetched and, when published without codes, coded."""

    data_url: str = None          # mirror base URL (<mirror>/<Dataset>/<file>); default $RECBOLE_MQL_DATA_URL
    cache_dir: str = None         # download + work folder; default $RECBOLE_MQL_CACHE or ~/.cache/recbole_mql/sources
    text_model: str = None        # transformers encoder, hub name or folder; default the shipped MiniLM
    rqvae_config: str = None      # RQ-VAE settings YAML; default properties/prep/rqvae_cpu.yaml
    image_meta: str = None        # Amazon metadata (json lines, .gz) with the image URLs
    images: str = None            # folder of <asin>.jpg (downloads go to <cache>/prep/<Name>/images/)
    clip_arch: str = "ViT-L-14"
    clip_weights: str = "openai"
    device: str = None
    on_collision: str = DEFAULT_ON_COLLISION
    make_unique: str = DEFAULT_MAKE_UNIQUE
    image_workers: int = 8
    progress: bool = True

    @classmethod
    def from_config(cls, config, **extra):
        """Options from a run's config (keys of :data:`CONFIG_KEYS`; unset keys keep the defaults)."""
        values = {}
        for key, name in CONFIG_KEYS.items():
            value = config[key] if key in config else None
            if value is not None:
                values[name] = value
        values.update(extra)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def needs_download(name, data_path, source=None):
    """True when ``name`` has no atomic files under ``data_path``, no local source, and is a known dataset."""
    return (not atomic_files_exist(name, data_path) and resolve_source(name, source) is None
            and name in KNOWN_DATASETS)


def ensure_dataset(name, data_path, source=None, options=None):
    """:func:`~dataset_prep.atomic.ensure_atomic_files`, falling back on the download of a known dataset
    when there is no local source (``source`` / ``$RECBOLE_MQL_SOURCE`` win). None when nothing was done."""
    options = options or PrepOptions()
    if needs_download(name, data_path, source):
        return prepare_known_dataset(name, data_path, options)
    return ensure_atomic_files(name, data_path, source=source, on_collision=options.on_collision)


def prepare_known_dataset(name, data_path="dataset", options=None):
    """Download the known dataset ``name`` and write its atomic files into ``<data_path>/<name>/``;
    returns a summary (``stages``: the stages that ran, in order; ``images``: what became of them)."""
    options = options or PrepOptions()
    if name not in KNOWN_DATASETS:
        download_dataset(name)  # raises the error that names --source
    cache = options.cache_dir or default_cache()
    folder = download_dataset(name, cache, options.data_url)
    if KNOWN_DATASETS[name].has_codes:
        summary = ensure_atomic_files(name, data_path, source=folder, on_collision=options.on_collision) or {}
        return {**summary, "source": folder, "stages": ["download", "atomic"]}
    return code_dataset(name, cache, data_path, options)


def _rqvae_settings(options):
    from dataset_prep.rqvae import RQVAEConfig

    return RQVAEConfig.from_yaml(options.rqvae_config or default_rqvae_config(),
                                 {"device": options.device} if options.device else None)


def code_dataset(name, source_root, data_path="dataset", options=None):
    """Text [+ image] codes of ``<source_root>/<name>/`` (processed files without codes) and its atomic
    files; the work folder is ``<source_root>/prep``. Returns the summary of :func:`prepare_known_dataset`."""
    options = options or PrepOptions()
    ws = stages.Workspace(out=os.path.join(source_root, "prep"), source_roots=[source_root])
    rqvae_config = _rqvae_settings(options)
    ran = ["download"]

    def code(feature, tag):
        checkpoint = stages.stage_rqvae(ws, feature, [name], rqvae_config, options.progress)
        ran.append(f"rqvae:{tag}")
        stages.stage_codes(ws, feature, checkpoint, name, options.make_unique, tag, device=rqvae_config.device)
        ran.append(f"codes:{tag}")

    text = stages.stage_text(ws, name, {}, options.text_model, device=options.device, progress=options.progress)
    ran.append("text")
    code(text, "text")
    images = _image_codes(ws, name, options, ran, code)
    summary = stages.stage_atomic(ws, name, data_path, options.on_collision) or {}
    ran.append("atomic")
    return {**summary, "source": os.path.join(source_root, name), "stages": ran, "images": images}


def _image_codes(ws, name, options, ran, code):
    """The image modality of :func:`code_dataset` when every item gets an image; else a one-line reason."""
    has_urls = bool(options.image_meta)
    if not has_urls and not options.images:
        from dataset_prep.images import urls_from_items

        has_urls = bool(urls_from_items(ws.require_input(name, f"{name}.item.json", "")))
    if not has_urls and not options.images:
        reason = (f"{name}: no image URLs known (set prep_image_meta / --image_meta to the Amazon 2018 "
                  f"meta_<Category>.json.gz, or give a folder of <asin>.jpg with prep_images / --images): "
                  f"text codes only")
        logger.warning(reason)
        return {"status": "none", "reason": reason}
    try:
        report = stages.stage_download_images(ws, name, options.image_meta, options.images,
                                              workers=options.image_workers, progress=options.progress)
    except PrepError as e:
        logger.warning(f"{name}: no images ({e}); text codes only")
        return {"status": "none", "reason": str(e)}
    ran.append("images")
    if report["missing"]:
        reason = (f"{name}: {report['missing']} of {report['requested']} items have no valid image "
                  f"(failures listed in {os.path.join(report['folder'], 'download_report.json')}; a re-run "
                  f"downloads only what is missing): text codes only")
        logger.warning(reason)
        return {"status": "incomplete", "reason": reason, **{k: v for k, v in report.items() if k != "failures"}}
    try:
        feature = stages.stage_image(ws, name, {}, options.images, options.clip_arch, options.clip_weights,
                                     device=options.device, progress=options.progress)
    except PrepError as e:
        logger.warning(f"{name}: image features failed ({e}); text codes only")
        return {"status": "no_features", "reason": str(e)}
    ran.append("image")
    code(feature, "image")
    return {"status": "coded", **{k: v for k, v in report.items() if k != "failures"}}
