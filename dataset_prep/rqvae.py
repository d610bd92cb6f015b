"""The quantitative translator of MQL4GRec: a residual-quantized VAE (RQ-VAE) that turns an item
feature vector into ``levels`` code indices, one per codebook.

- MLP encoder ``in -> 2048 -> 1024 -> 512 -> 256 -> 128 -> 64 -> 32`` (ReLU between layers, none
  after the last; Xavier-normal weights, zero biases), mirrored decoder. Features go in as they
  are (not normalised), as in the paper.
- ``levels`` codebooks of ``codebook_size`` vectors of ``code_dim``: level ``l`` quantizes the
  residual left by levels ``< l``.
- loss = reconstruction MSE + mean over levels of (codebook MSE + beta x commitment MSE).
  Residuals are formed from the *detached* code vectors, so each level's commitment term pulls
  the encoder output towards the sum of the codes chosen so far (the RQ-VAE commitment), while
  a codebook only learns from its own codebook term.
- Each codebook is initialised by k-means (faiss) on the residuals of all training items: on a GPU
  when the model is on CUDA and faiss has GPU support (the ``gpu`` extra, faiss-gpu), else on the
  host (:func:`kmeans_backend`; the log says which).
- While training, a level whose ``sinkhorn_epsilon`` is > 0 (the last one in the paper) assigns
  codes by a Sinkhorn-balanced transport plan, spreading the batch over the codebook; at
  inference every level takes its nearest code.
- Training keeps the weights of the evaluation with the lowest collision rate (fraction of items
  whose full code is shared with an earlier item).
- ``device`` (:mod:`dataset_prep.device`, default ``auto``): features, model, codebooks and every
  tensor of training and encoding live on it; codes come back as CPU numpy arrays. One device and
  one seed give one set of codes on CUDA too, with no global switch: the only accumulating backward
  (the codebook lookup's) runs torch's sorted, ordered CUDA kernel, and cuBLAS on one stream is
  reproducible (``tests/test_gpu_prep.py`` checks it). A CPU and a GPU give different codes.
"""

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dataset_prep.device import DEFAULT_DEVICE, check_device, resolve_device
from dataset_prep.io import PrepError

logger = logging.getLogger(__name__)


@dataclass
class RQVAEConfig:
    """Every RQ-VAE setting; ``properties/prep/rqvae.yaml`` holds the paper's values."""

    hidden: list = field(default_factory=lambda: [2048, 1024, 512, 256, 128, 64])
    code_dim: int = 32
    levels: int = 4
    codebook_size: int = 256
    beta: float = 0.25
    sinkhorn_epsilon: list = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.003])
    sinkhorn_iters: int = 50
    kmeans_iters: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 2048
    epochs: int = 500
    eval_every: int = 10
    seed: int = 2020
    device: str = DEFAULT_DEVICE

    @classmethod
    def from_dict(cls, values, source="settings"):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PrepError(f"{source}: unknown RQ-VAE setting(s) {unknown}; valid keys: {sorted(known)}.")
        config = cls(**values)
        if len(config.sinkhorn_epsilon) != config.levels:
            raise PrepError(f"{source}: sinkhorn_epsilon needs one value per level ({config.levels}).")
        config.device = check_device(config.device, f"{source}: device")
        return config

    @classmethod
    def from_yaml(cls, path, overrides=None):
        import yaml

        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
        except OSError:
            raise PrepError(f"RQ-VAE settings file not found: {path} (see properties/prep/).") from None
        values.update(overrides or {})
        return cls.from_dict(values, path)

    def as_dict(self):
        return dataclasses.asdict(self)


def mlp(sizes):
    """Linear layers through ``sizes`` with ReLU between them (none after the last).

    Weights are Xavier-normal, biases zero. With PyTorch's default init each ReLU layer shrinks the
    signal several-fold, so after 7 layers the encoder output is nearly constant: measured on
    MiniLM features of Scientific, training then sat at the features' variance (reconstructing the
    mean) for 15+ epochs while the codes collapsed (98% collisions); with Xavier init the
    reconstruction improves from the first epoch and the collision rate falls steadily.
    """
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(a, b)
        nn.init.xavier_normal_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def squared_distances(x, codebook):
    """||x_i - c_k||^2 for x [n, d] and codebook [K, d] -> [n, K]."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.t() + codebook.pow(2).sum(1)).clamp_min(0)


def sinkhorn_assign(distances, epsilon, iters):
    """Balanced code choice: argmax over codes of the Sinkhorn plan for cost ``distances`` [n, K] -> [n].

    The costs are first rescaled to [-1, 1] so that ``epsilon`` means the same whatever the feature
    scale; the plan is computed in the log domain (exp(-cost / 0.003) overflows otherwise). Its rows
    sum to 1/n and its columns to 1/K: each code gets an equal share of the batch.
    """
    cost = distances.double()
    low, high = cost.min(), cost.max()
    cost = (cost - (high + low) / 2) / ((high - low) / 2 + 1e-5)
    log_plan = -cost / epsilon
    n, k = log_plan.shape
    for _ in range(iters):
        log_plan = log_plan - torch.logsumexp(log_plan, dim=0, keepdim=True) - math.log(k)
        log_plan = log_plan - torch.logsumexp(log_plan, dim=1, keepdim=True) - math.log(n)
    return log_plan.argmax(dim=1)


def kmeans_backend(device):
    """Where faiss runs the k-means of a model on ``device``: (GPU id, or None for the host; the log line).

    The GPU when the model is on CUDA and faiss reports GPUs (faiss-gpu installed, a GPU visible);
    otherwise the host, with the reason.
    """
    import faiss

    device = torch.device(device)
    if device.type != "cuda":
        return None, f"k-means: faiss-cpu on the host (device {device})"
    gpus = faiss.get_num_gpus()
    if gpus == 0:  # faiss-cpu builds report 0 GPUs too; only faiss-gpu has GPU resources
        why = "no GPU visible" if hasattr(faiss, "StandardGpuResources") else "faiss-gpu not installed"
        return None, f"k-means: faiss-cpu on the host ({why})"
    gpu = device.index if device.index is not None else 0  # faiss numbers the visible GPUs as CUDA does
    if gpu >= gpus:
        return None, f"k-means: faiss-cpu on the host (faiss sees {gpus} GPU(s), not {device})"
    return gpu, f"k-means: faiss on GPU {gpu}"


def _kmeans(dim, k, iters, seed, gpu=None):
    """A faiss ``Kmeans`` whose assignment index is on GPU ``gpu`` (None: the host's flat L2 index)."""
    import faiss

    kmeans = faiss.Kmeans(dim, k, niter=iters, seed=seed, verbose=False)
    if gpu is not None:
        # Kmeans(gpu=True) would spread over every visible GPU; this puts it on the model's one.
        kmeans.gpu_resources = faiss.StandardGpuResources()  # kept alive as long as the index
        kmeans.index = faiss.index_cpu_to_gpu(kmeans.gpu_resources, gpu, faiss.IndexFlatL2(dim))
    return kmeans


class RQVAE(nn.Module):
    """Encoder -> residual quantizer -> decoder over feature vectors [batch, in_dim]."""

    def __init__(self, in_dim, config):
        super().__init__()
        self.config = config
        self.in_dim = in_dim
        self.encoder = mlp([in_dim] + list(config.hidden) + [config.code_dim])
        self.decoder = mlp([config.code_dim] + list(reversed(config.hidden)) + [in_dim])
        self.codebooks = nn.ParameterList(
            nn.Parameter(torch.empty(config.codebook_size, config.code_dim).uniform_(
                -1 / config.codebook_size, 1 / config.codebook_size))
            for _ in range(config.levels))
        # Saved with the weights: a checkpoint tells whether k-means has run.
        self.register_buffer("initialized", torch.tensor(False))

    def choose_codes(self, residual, level):
        """Code index per row of ``residual`` [batch, code_dim] at ``level`` -> [batch]."""
        distances = squared_distances(residual, self.codebooks[level])
        epsilon = self.config.sinkhorn_epsilon[level]
        if self.training and epsilon > 0:
            return sinkhorn_assign(distances.detach(), epsilon, self.config.sinkhorn_iters)
        return distances.argmin(dim=1)

    def quantize(self, z):
        """z [batch, code_dim] -> (quantized z [batch, code_dim] (straight-through), codes [batch, levels],
        residuals [batch, levels, code_dim] (the input of each level), mean quantization loss)."""
        residual, total, losses, codes, residuals = z, torch.zeros_like(z), [], [], []
        for level, codebook in enumerate(self.codebooks):
            index = self.choose_codes(residual, level)
            chosen = codebook[index]
            codebook_loss = F.mse_loss(chosen, residual.detach())
            commitment = F.mse_loss(residual, chosen.detach())
            losses.append(codebook_loss + self.config.beta * commitment)
            codes.append(index)
            residuals.append(residual)
            total = total + chosen
            residual = residual - chosen.detach()
        quantized = z + (total - z).detach()  # straight-through: the decoder's gradient reaches the encoder
        return quantized, torch.stack(codes, 1), torch.stack(residuals, 1), torch.stack(losses).mean()

    def forward(self, x):
        """x [batch, in_dim] -> (reconstruction [batch, in_dim], codes [batch, levels], quantization loss)."""
        quantized, codes, _, quant_loss = self.quantize(self.encoder(x))
        return self.decoder(quantized), codes, quant_loss

    def loss(self, x):
        """(total loss, reconstruction MSE, quantization loss) of a batch x [batch, in_dim]."""
        reconstruction, _, quant_loss = self(x)
        recon_loss = F.mse_loss(reconstruction, x)
        return recon_loss + quant_loss, recon_loss.detach(), quant_loss.detach()

    @torch.no_grad()
    def init_codebooks(self, x, iters, seed):
        """k-means (faiss) of each level's residuals of all items x [n, in_dim]: codebook l = centroids."""
        if x.shape[0] < self.config.codebook_size:
            raise PrepError(f"k-means needs at least codebook_size={self.config.codebook_size} items, got "
                            f"{x.shape[0]}; lower codebook_size in the RQ-VAE settings or add items.")
        gpu, where = kmeans_backend(self.codebooks[0].device)
        logger.info(where)
        residual = self.encoder(x.to(self.codebooks[0].device)).float()
        for level, codebook in enumerate(self.codebooks):
            data = np.ascontiguousarray(residual.cpu().numpy(), dtype=np.float32)
            kmeans = _kmeans(data.shape[1], self.config.codebook_size, iters, seed + level, gpu)
            kmeans.train(data)
            codebook.copy_(torch.from_numpy(kmeans.centroids).to(codebook))
            residual = residual - codebook[squared_distances(residual, codebook).argmin(1)]
        self.initialized.fill_(True)

    @torch.no_grad()
    def encode_codes(self, x, batch_size=8192):
        """Nearest-code assignment of items x [n, in_dim] -> (codes [n, levels] int64,
        residuals [n, levels, code_dim] float32: the vector each level quantized)."""
        was_training = self.training
        self.eval()
        device = self.codebooks[0].device
        codes, residuals = [], []
        for start in range(0, x.shape[0], batch_size):
            _, c, r, _ = self.quantize(self.encoder(x[start:start + batch_size].to(device)))
            codes.append(c)
            residuals.append(r)
        self.train(was_training)
        return torch.cat(codes).cpu().numpy(), torch.cat(residuals).float().cpu().numpy()

    def codebook_arrays(self):
        """The codebooks as float32 [levels, codebook_size, code_dim]."""
        return torch.stack([c.detach() for c in self.codebooks]).float().cpu().numpy()


def collision_rate(codes):
    """Fraction of the rows of ``codes`` [n, levels] that repeat an earlier row (0 = all unique)."""
    return 1.0 - len(np.unique(codes, axis=0)) / len(codes)


def stack_features(arrays, names):
    """Concatenate the feature matrices of several datasets [n_i, d] -> [sum n_i, d].

    Joint training needs one feature space: matrices of different widths come from different
    encoders, and projecting one onto the other would invent a mapping, so that is an error.
    """
    widths = {name: a.shape[1] for a, name in zip(arrays, names)}
    if len(set(widths.values())) > 1:
        raise PrepError(f"Feature widths differ across datasets {widths}: extract every dataset's features "
                        f"with the same encoder (same --text_model / --clip_arch) before joint training.")
    return np.concatenate([np.asarray(a, dtype=np.float32) for a in arrays])


def _seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))


def train_rqvae(features, config, progress=True):
    """Train on items ``features`` [n, in_dim]; returns (model with the lowest-collision weights, history).

    history = {"epochs": [{"epoch", "loss", "recon", "quant", "collision_rate"?}], "best_epoch",
    "best_collision_rate", "init_collision_rate"}.
    """
    device = torch.device(resolve_device(config.device, "RQ-VAE setting device"))
    logger.info(f"rq-vae: training on {device} ({len(features)} items, seed {config.seed})")
    _seed_everything(config.seed)
    x = torch.as_tensor(np.asarray(features, dtype=np.float32), device=device)
    # Built on the CPU, then moved: the initial weights are the same on every device.
    model = RQVAE(x.shape[1], config).to(device)
    model.init_codebooks(x, config.kmeans_iters, config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(config.seed)

    init_rate = collision_rate(model.encode_codes(x)[0])
    # The k-means start is no candidate: its decoder is untrained. The last epoch is always evaluated.
    best = {"rate": math.inf, "epoch": 0, "state": None}
    history = {"epochs": [], "init_collision_rate": init_rate}
    bar = tqdm(range(1, config.epochs + 1), desc="rq-vae", unit="epoch", disable=not progress)
    for epoch in bar:
        record = {"epoch": epoch, **_train_epoch(model, optimizer, x, config.batch_size, order)}
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            record["collision_rate"] = rate = collision_rate(model.encode_codes(x)[0])
            if rate < best["rate"]:  # strict: among equal rates the earliest wins
                best = {"rate": rate, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
            bar.set_postfix(loss=f"{record['loss']:.4f}", collisions=f"{rate:.4f}")
        history["epochs"].append(record)
    if best["state"] is None:  # epochs == 0: the k-means start is all there is
        best = {"rate": init_rate, "epoch": 0, "state": model.state_dict()}
    model.load_state_dict(best["state"])
    history.update(best_epoch=best["epoch"], best_collision_rate=best["rate"])
    logger.info(f"rq-vae: best collision rate {best['rate']:.4f} at epoch {best['epoch']} "
                f"(k-means init: {init_rate:.4f})")
    return model.eval(), history


def _train_epoch(model, optimizer, x, batch_size, generator):
    """One pass over x in a seeded random order; returns the item-weighted mean losses."""
    model.train()
    permutation = torch.randperm(x.shape[0], generator=generator).to(x.device)
    sums = np.zeros(3)
    for start in range(0, x.shape[0], batch_size):
        batch = x[permutation[start:start + batch_size]]
        loss, recon, quant = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums += len(batch) * np.array([loss.item(), recon.item(), quant.item()])
    loss, recon, quant = (sums / x.shape[0]).tolist()
    return {"loss": loss, "recon": recon, "quant": quant}


def save_checkpoint(path, model, extra=None):
    """Weights + settings + ``extra`` (plain JSON-like values) to ``path``, atomically."""
    from dataset_prep.io import atomic_write

    state = {"config": model.config.as_dict(), "in_dim": model.in_dim,
             "state_dict": model.state_dict(), "extra": extra or {}}
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path, device="cpu"):
    """(model on ``device`` in eval mode, extra) from a file written by :func:`save_checkpoint`, whatever
    device trained it."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise PrepError(f"RQ-VAE checkpoint not found: {path}; train one with "
                        f"`python -m dataset_prep rqvae`.") from None
    model = RQVAE(state["in_dim"], RQVAEConfig.from_dict(state["config"], path))
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval(), state["extra"]
