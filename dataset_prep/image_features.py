"""Item images -> one CLIP ``encode_image`` vector per item (not normalised), as in MQL4GRec.

The model is open_clip's ``create_model_and_transforms(arch, pretrained=weights)``: ``weights`` is
a tag (``openai``, downloaded once into the hub cache) or a local checkpoint file; ``arch`` may
also be ``local-dir:/folder`` holding ``open_clip_config.json`` and the weights. Default:
ViT-L-14 / openai (768-d), the paper's choice.

Images are ``<image_dir>/<asin>.jpg`` (ASINs from ``<Name>.item2id``) or ``<image_dir>/<item id>.jpg``.
Items without an image are an error: rows are item ids, so a missing image cannot be skipped.
Drop such items before (``python -m dataset_prep raw --require_images``, which counts them).
"""

import glob
import os

import numpy as np
import torch
from tqdm import tqdm

from dataset_prep.io import PrepError
from dataset_prep.network import hub_reachable

DEFAULT_ARCH = "ViT-L-14"
DEFAULT_WEIGHTS = "openai"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def image_tag(arch, weights):
    """File-name-safe name of the encoder: ``ViT-L-14-openai``, ``tiny-clip``, ..."""
    if arch.startswith("local-dir:"):
        return os.path.basename(os.path.normpath(arch[len("local-dir:"):]))
    weights_name = os.path.splitext(os.path.basename(weights))[0] if weights else "random"
    return f"{arch}-{weights_name}".replace("/", "-")


def _resolve_weights(arch, weights):
    """A local file for ``weights`` (path, or a tag already in the hub cache), or the tag itself when
    the hub is reachable; otherwise a :class:`PrepError` that names the flag for a local checkpoint."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    if os.path.isfile(weights):
        return weights
    cfg = get_pretrained_cfg(arch, weights)
    if not cfg:
        raise PrepError(
            f"--clip_weights={weights!r} is neither a file nor a pretrained tag of {arch} "
            f"(tags: {open_clip.list_pretrained_tags_by_model(arch)})."
        )
    cached = _cached_checkpoint(cfg)
    if cached:
        return cached
    if not hub_reachable():
        raise PrepError(
            f"CLIP weights '{weights}' for {arch} must be downloaded and the hub cannot be reached (offline?). "
            f"Pass --clip_weights=/path/to/checkpoint (an open_clip state dict for {arch}), or "
            f"--clip_arch=local-dir:/folder with open_clip_config.json and weights."
        )
    return weights


def _cached_checkpoint(cfg):
    """The checkpoint of a pretrained tag if it is already in the Hugging Face cache, else None."""
    repo = (cfg.get("hf_hub") or "").strip("/")
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def load_clip(arch=DEFAULT_ARCH, weights=DEFAULT_WEIGHTS, device="cpu"):
    """(model in eval mode, preprocess transform) for ``arch`` with ``weights``."""
    import open_clip

    if arch.startswith("local-dir:"):
        folder = arch[len("local-dir:"):]
        if not glob.glob(os.path.join(folder, "open_clip_config.json")) or not any(
                glob.glob(os.path.join(folder, "*" + s)) for s in WEIGHT_SUFFIXES):
            raise PrepError(f"{folder} needs open_clip_config.json and a weights file (*.safetensors/*.bin/*.pth).")
        pretrained = None
    elif arch.startswith("hf-hub:"):
        if not hub_reachable():
            raise PrepError(f"--clip_arch {arch} needs the hub, which cannot be reached (offline?); "
                            f"pass --clip_arch=local-dir:/folder or a built-in arch with --clip_weights=FILE.")
        pretrained = None
    elif arch not in open_clip.list_models():
        raise PrepError(f"Unknown --clip_arch {arch!r}; choose one of open_clip.list_models() or local-dir:/folder.")
    else:
        pretrained = _resolve_weights(arch, weights)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device)
    except (RuntimeError, OSError, ValueError) as e:
        raise PrepError(f"open_clip could not build {arch} with weights {pretrained or arch}: {e}") from None
    return model.eval(), preprocess


def image_paths(n_items, image_dir, item2id=None):
    """One image path per item id 0..n_items-1; any missing image is a :class:`PrepError` with a count."""
    asin_of = {i: a for a, i in (item2id or {}).items()}
    paths, missing = [], []
    for item in range(n_items):
        candidates = [os.path.join(image_dir, f"{asin_of[item]}.jpg")] if item in asin_of else []
        candidates.append(os.path.join(image_dir, f"{item}.jpg"))
        found = next((c for c in candidates if os.path.isfile(c)), None)
        paths.append(found)
        if found is None:
            missing.append(asin_of.get(item, str(item)))
    if missing:
        raise PrepError(
            f"{len(missing)} of {n_items} items have no image in {image_dir} (e.g. {', '.join(missing[:5])}.jpg). "
            f"Re-run `python -m dataset_prep raw ... --require_images` to drop (and count) them, or add the images."
        )
    return paths


def _load_image(path, preprocess):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return preprocess(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise PrepError(f"Cannot read image {path} ({e}); delete it so that it is downloaded again, "
                        f"or replace it.") from None


@torch.inference_mode()
def encode_images(paths, model, preprocess, batch_size=32, device="cpu", progress=True):
    """CLIP ``encode_image`` of each image file -> float32 [len(paths), embed dim], not normalised."""
    rows = []
    for start in tqdm(range(0, len(paths), batch_size), desc="image features", unit="batch", disable=not progress):
        batch = torch.stack([_load_image(p, preprocess) for p in paths[start:start + batch_size]]).to(device)
        rows.append(model.encode_image(batch).float().cpu().numpy())
    return np.concatenate(rows).astype(np.float32)
