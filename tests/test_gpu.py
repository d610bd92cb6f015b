"""CUDA against CPU on the paper-size MQL4GRec (4+4 layers, d_model 128) built from the shipped
Instruments slice: a training step gives the CPU's loss and gradients, decoding gives the CPU's
top-20, the epoch's batches are the CPU's, and a one-process nccl DDP step trains. Marked ``gpu``;
skipped without a CUDA GPU (``benchmarks/gpu_check.sh`` runs them on a lent machine)."""

import contextlib
import copy
import socket

import pytest
import torch
from recbole.utils import init_seed

from recbole_mql.config import Config
from recbole_mql.data.preparation import load_data
from recbole_mql.data.task_samples import MixedBatch, TaskSamples
from recbole_mql.model.mql4grec import merge_padded
from recbole_mql.utils import get_model
from tests.conftest import quiet_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda", 0)
TIE = 1e-5  # two decoded items may swap places only where their scores are equal within this


@pytest.fixture(scope="module")
def built(instruments_small_atomic, tmp_path_factory):
    """(config, train, valid, model): the paper-size MQL4GRec (its YAML's sizes, five tasks), on the CPU,
    dropout off (the same forward on both devices), fp32."""
    config = Config("MQL4GRec", "Instruments", config_dict=quiet_config(
        data_path=instruments_small_atomic, checkpoint_dir=str(tmp_path_factory.mktemp("gpu_saved")),
        dropout_rate=0.0, autocast_dtype="none"))
    init_seed(config["seed"], config["reproducibility"])
    _, train, valid, _ = load_data(config)
    init_seed(config["seed"], config["reproducibility"])
    return config, train, valid, get_model("MQL4GRec")(config, train._dataset)


@pytest.fixture
def exact_fp32():
    """Full-precision float32 matrix products on the GPU inside the test (no TF32)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def every_task_batch(net, train, rows=48):
    """(input_ids, attention_mask, labels) of ``rows`` samples of a RecBole training batch written for
    every task, built once on the CPU (the fusion task draws coins: both devices must see the same ones)."""
    torch.manual_seed(0)
    batch = next(iter(train))
    history, lengths, target = batch["item_id_list"][:rows], batch["item_length"][:rows], batch["item_id"][:rows]
    return merge_padded([net.task_inputs(task, history, lengths, target) for task in net.tasks])


def train_step(net, inputs, autocast=None):
    """One AdamW step of ``net`` (on its device) on ``inputs``: (mean token loss, gradients by name)."""
    device = next(net.parameters()).device
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=0.01)
    ids, mask, labels = (t.to(device) for t in inputs)
    with torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext():
        loss_sum, tokens = net.token_loss(ids, mask, labels)
    loss = loss_sum / tokens
    loss.backward()
    grads = {name: p.grad.detach().float().cpu().clone() for name, p in net.named_parameters() if p.grad is not None}
    optimizer.step()
    return loss.item(), grads


def relative_gap(a, b):
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def test_training_step_on_cuda_gives_the_cpu_loss(built, exact_fp32):
    config, train, _, net = built
    inputs = every_task_batch(net, train)
    cpu_loss, cpu_grads = train_step(copy.deepcopy(net), inputs)
    gpu_net = copy.deepcopy(net).to(CUDA)
    gpu_loss, gpu_grads = train_step(gpu_net, inputs)
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-5)
    assert cpu_grads.keys() == gpu_grads.keys()
    flat = lambda grads: torch.cat([g.flatten() for g in grads.values()])  # noqa: E731
    assert relative_gap(flat(gpu_grads), flat(cpu_grads)) < 1e-4
    # what training on a GPU runs (autocast_dtype auto -> bf16): the same loss to bf16's precision
    bf16_loss, _ = train_step(copy.deepcopy(net).to(CUDA), inputs, autocast=torch.bfloat16)
    assert bf16_loss == pytest.approx(cpu_loss, rel=2e-2)


def test_decoding_on_cuda_gives_the_cpu_top20(built, exact_fp32):
    """The ensemble's top-20 of 64 users, CPU against CUDA. A place agrees when it holds the same item,
    or a tie (an item of the same score within ``TIE``). A user's list may still part at its tail where
    two partial codes stood within float noise (~1e-6) at a beam's cut-off, as between any two float
    implementations (benchmarks/decode_speed.py reports the same statistic against HF generate): 95%
    of the users must agree at every place, every user at the first one."""
    _, _, valid, net = built
    interaction = next(iter(valid))[0]
    interaction = interaction[torch.arange(min(64, len(interaction)))]
    net.eval()
    cpu_items, cpu_scores = net.generate(interaction)
    gpu_net = copy.deepcopy(net).to(CUDA).eval()
    gpu_items, gpu_scores = (t.cpu() for t in gpu_net.generate(interaction.to(CUDA)))
    cpu_items, cpu_scores, gpu_items, gpu_scores = (t[:, :20] for t in (cpu_items, cpu_scores, gpu_items, gpu_scores))
    assert (cpu_items >= 0).all(dim=1).any()
    same_item = cpu_items == gpu_items
    finite = torch.isfinite(cpu_scores) & torch.isfinite(gpu_scores)
    gap = torch.where(finite, (cpu_scores - gpu_scores).abs(), torch.zeros_like(cpu_scores))
    agrees = same_item | (finite & (gap <= TIE))
    users = agrees.all(dim=1)
    assert users.float().mean() >= 0.95, (
        f"{int((~users).sum())} of {len(users)} users' top-20 differ beyond ties; largest gap at a differing place "
        f"{gap[~agrees].max():.2e}")
    assert agrees[:, 0].all(), "the first recommendation differs"
    # the same item gets the same score on both devices
    assert torch.allclose(gpu_scores[same_item & finite], cpu_scores[same_item & finite], atol=1e-4)


def test_epoch_batches_on_cuda_are_the_cpu_batches(built):
    config, train, _, net = built
    samples = TaskSamples(train._dataset, net.tasks, net.max_his_len, mixing="mixed")
    on_cpu = samples.epoch_batches(0, 128, config["seed"], "cpu")
    on_gpu = samples.epoch_batches(0, 128, config["seed"], CUDA)
    assert len(on_cpu) == len(on_gpu) > 0
    for a, b in zip(on_cpu, on_gpu):
        parts_a = a.parts if isinstance(a, MixedBatch) else [a]
        parts_b = b.parts if isinstance(b, MixedBatch) else [b]
        assert [p.task for p in parts_a] == [p.task for p in parts_b]
        for p, q in zip(parts_a, parts_b):
            assert q.target.device.type == "cuda" and torch.equal(p.target, q.target.cpu())
            assert (p.history is None) == (q.history is None) and p.max_kept == q.max_kept
            if p.history is not None:
                assert torch.equal(p.history, q.history.cpu()) and torch.equal(p.lengths, q.lengths.cpu())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_nccl_ddp_step_updates_the_weights(built):
    import torch.distributed as dist

    _, train, _, net = built
    inputs = [t.to(CUDA) for t in every_task_batch(net, train)]
    torch.cuda.set_device(CUDA)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        model = copy.deepcopy(net).to(CUDA).train()
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0], broadcast_buffers=False)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=5e-4)
        tokens = int((inputs[2] != -100).sum())
        (ddp(*inputs) / tokens).backward()  # MQL4GRec.forward: the summed token loss
        optimizer.step()
        changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
        assert len(changed) > len(before) // 2, f"only {len(changed)} of {len(before)} tensors changed"
        assert all(torch.isfinite(p).all() for p in model.parameters())
        total = torch.ones(1, device=CUDA)
        dist.all_reduce(total)  # a collective over nccl
        assert total.item() == 1.0
    finally:
        dist.destroy_process_group()
