"""MQL4GRec / TIGER as RecBole models on real-data subsets: inputs, tasks, metrics, training, resume."""

import math

import pytest
import torch
from recbole.utils import init_seed

from dataset_prep.atomic import convert
from recbole_mql.data.item_codes import CodeError
from recbole_mql.model.ensemble import ensemble_rank
from recbole_mql.model.tokenizer import EOS_ID
from recbole_mql.config import Config
from recbole_mql.data.preparation import load_data
from recbole_mql.utils import get_model, get_trainer
from tests.conftest import SMALL_T5, quiet_config, subset_source


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    convert("Instruments", subset_source("Instruments", 600, str(root / "src")), str(root / "data"))
    convert("Scientific", subset_source("Scientific", 150, str(root / "src_sci")), str(root / "data"))
    return str(root / "data")


def setup(model, dataset, data_path, tmp_path, **extra):
    config = Config(model, dataset, config_dict=quiet_config(
        data_path=data_path, checkpoint_dir=str(tmp_path / "saved"), **{**SMALL_T5, **extra}))
    init_seed(config["seed"], config["reproducibility"])
    _, train, valid, test = load_data(config)
    init_seed(config["seed"], config["reproducibility"])
    net = get_model(model)(config, train._dataset)
    return config, (train, valid, test), net, get_trainer(config["MODEL_TYPE"], model)(config, net)


def test_history_written_as_code_tokens(data_path, tmp_path):
    _, _, net, _ = setup("MQL4GRec", "Instruments", data_path, tmp_path, max_his_len=2)
    history = torch.tensor([[3, 5, 7, 0], [4, 0, 0, 0]])
    ids, mask = net.encode_history(history, torch.tensor([3, 1]), "image")
    codes = net.tokens_image
    assert ids[0].tolist() == codes[5].tolist() + codes[7].tolist() + [EOS_ID]  # last 2 items
    assert ids[1, :5].tolist() == codes[4].tolist() + [EOS_ID] and mask[1].sum() == 5
    ids, _ = net.encode_history(history[:1], torch.tensor([3]), "text", task="fusionseqrec_t2i")
    assert ids[0, 0] == net.language.task_token_id("fusionseqrec_t2i")
    assert net.tokens_text.shape[1] == 5 and codes.shape[1] == 4  # text codes carry the collision level


def test_every_task_builds_consistent_inputs(data_path, tmp_path):
    _, (train, _, _), net, _ = setup("MQL4GRec", "Instruments", data_path, tmp_path)
    batch = next(iter(train))
    for task in net.tasks:
        ids, mask, labels = net.task_inputs(task, batch["item_id_list"], batch["item_length"], batch["item_id"])
        assert ids.shape == mask.shape and labels.shape[0] == ids.shape[0]
        assert ((ids == EOS_ID).sum(dim=1) == 1).all()
        loss, n = net.token_loss(ids, mask, labels)
        assert n == int((labels != -100).sum()) and math.isfinite(loss.item())


def test_beam_smaller_than_topk_is_refused(data_path, tmp_path):
    with pytest.raises(ValueError, match="beam_size=5 < max\\(topk\\)=10"):
        setup("TIGER", "Instruments", data_path, tmp_path, beam_size=5)


def test_missing_modality_refused_or_skipped(data_path, tmp_path):
    with pytest.raises(CodeError, match="need image codes, which Scientific.item does not have"):
        setup("MQL4GRec", "Scientific", data_path, tmp_path)
    _, _, net, _ = setup("MQL4GRec", "Scientific", data_path, tmp_path, skip_unavailable_tasks=True,
                         eval_modality="text")
    assert net.tasks == ["seqrec"]


def test_ensemble_rule():
    items_t = torch.tensor([[10, 11, 12]])
    scores_t = torch.tensor([[-0.1, -0.5, -0.9]])
    items_i = torch.tensor([[12, 13, -1]])
    scores_i = torch.tensor([[-0.2, -0.3, 0.0]])
    items, scores = ensemble_rank(items_t, scores_t, items_i, scores_i)
    # 12 is in both lists: (-0.9 - 0.2) / 2 + 1 = 0.45 -> first; the others keep their own scores
    assert items[0, :4].tolist() == [12, 10, 13, 11]
    assert torch.allclose(scores[0, :4], torch.tensor([0.45, -0.1, -0.3, -0.5]))
    assert (items[0, 4:] == -1).all() and torch.isinf(scores[0, 4:]).all()


def hand_metrics(net, loader, ks=(1, 5, 10)):
    hits, ndcg, users = {k: 0.0 for k in ks}, {k: 0.0 for k in ks}, 0
    for interaction, _, _, positive_i in loader:
        items, _ = net.generate(interaction)
        for row, target in zip(items.tolist(), interaction["item_id"].tolist()):
            users += 1
            if target in row:
                rank = row.index(target)
                for k in ks:
                    if rank < k:
                        hits[k] += 1
                        ndcg[k] += 1 / math.log2(rank + 2)
    return {f"hit@{k}": hits[k] / users for k in ks} | {f"ndcg@{k}": ndcg[k] / users for k in ks}


@pytest.mark.parametrize("model", ["TIGER", "MQL4GRec"])
def test_recbole_metrics_equal_hand_computed(model, data_path, tmp_path):
    _, (_, valid, _), net, trainer = setup(model, "Instruments", data_path, tmp_path, eval_batch_size=128)
    net.eval()
    got = trainer.evaluate(valid, load_best_model=False)
    expected = hand_metrics(net, valid)
    for key, value in expected.items():
        assert got[key] == pytest.approx(round(value, 4), abs=1e-4), key


def test_full_sort_predict_never_reads_target(data_path, tmp_path):
    _, (_, valid, _), net, _ = setup("TIGER", "Instruments", data_path, tmp_path)
    net.eval()
    interaction = next(iter(valid))[0]
    scores = net.full_sort_predict(interaction)
    interaction["item_id"] = torch.ones_like(interaction["item_id"])
    assert torch.equal(scores, net.full_sort_predict(interaction))
    finite = torch.isfinite(scores)
    assert (finite.sum(dim=1) == net.beam_size).all()  # exactly beam_size distinct items per user
    top = scores.topk(net.beam_size, dim=1).values
    assert (top[:, :-1] > top[:, 1:]).all()  # strictly decreasing by rank


def test_training_lowers_loss_and_beats_popularity(data_path, tmp_path):
    config, (train, valid, test), net, trainer = setup(
        "TIGER", "Instruments", data_path, tmp_path, epochs=6, learning_rate=0.003, valid_users=0,
        eval_step=6, train_batch_size=128)
    trainer.fit(train, valid, saved=True)
    losses = list(trainer.train_loss_dict.values())
    assert losses[-1] < 0.75 * losses[0]
    ours = trainer.evaluate(test, load_best_model=True)
    pop_config = Config("Pop", "Instruments", config_dict=quiet_config(
        data_path=config["data_path"].rsplit("/", 1)[0], checkpoint_dir=str(tmp_path / "pop")))
    _, pop_train, pop_valid, pop_test = load_data(pop_config)
    pop = get_model("Pop")(pop_config, pop_train._dataset)
    pop_trainer = get_trainer(pop_config["MODEL_TYPE"], "Pop")(pop_config, pop)
    pop_trainer.fit(pop_train, pop_valid, saved=True)
    popularity = pop_trainer.evaluate(pop_test, load_best_model=True)
    assert ours["ndcg@10"] > popularity["ndcg@10"], (ours, popularity)


def test_resume_gives_the_same_next_step(data_path, tmp_path):
    extra = dict(epochs=2, valid_users=20, train_batch_size=256, tasks=["seqrec", "fusionseqrec", "item2image"])
    _, (train, valid, _), net, trainer = setup("MQL4GRec", "Instruments", data_path, tmp_path, **extra)
    trainer.fit(train, valid, saved=True)
    straight = {k: v.clone() for k, v in net.state_dict().items()}

    class Interrupt(Exception):
        pass

    def interrupt(epoch, score):
        raise Interrupt

    _, (train, valid, _), net, trainer = setup("MQL4GRec", "Instruments", data_path, tmp_path / "b", **extra)
    with pytest.raises(Interrupt):
        trainer.fit(train, valid, saved=True, callback_fn=interrupt)
    last = trainer.last_model_file

    _, (train, valid, _), net, trainer = setup("MQL4GRec", "Instruments", data_path, tmp_path / "b", **extra)
    trainer.resume_checkpoint(last)
    assert trainer.start_epoch == 1
    assert trainer.saved_model_file != last  # the best model never overwrites the last state
    trainer.fit(train, valid, saved=True)
    assert trainer.evaluate(valid, load_best_model=True)["ndcg@10"] >= 0
    for key, value in net.state_dict().items():
        assert torch.allclose(value, straight[key], atol=1e-6), key


def test_pretrain_then_finetune(data_path, tmp_path):
    """One backbone pre-trained on two domains (text-only Scientific, multimodal Instruments), then
    fine-tuned on Instruments from that checkpoint through run_recbole_mql."""
    from recbole_mql.checkpoint import load_checkpoint_file as load_own_checkpoint
    from recbole_mql.quick_start import run_pretraining, run_recbole_mql

    common = quiet_config(data_path=data_path, checkpoint_dir=str(tmp_path / "saved"), pretrain_epochs=1,
                          valid_users=20, epochs=1, train_batch_size=256, **SMALL_T5)
    path = run_pretraining(Config("MQL4GRec", "Instruments",
                                  config_dict={**common, "pretrain_datasets": ["Scientific", "Instruments"]}))
    pretrained = load_own_checkpoint(path)
    assert pretrained["epoch"] == 0 and pretrained["language"] == {"max_levels": 5, "codebook_size": 256}
    assert all(k.startswith("t5.") for k in pretrained["state_dict"])  # weights only, no code tables
    # one fine-tuning epoch at learning rate 0 (epochs=0 is refused): the model tested is exactly the pre-trained backbone
    result = run_recbole_mql("MQL4GRec", "Instruments", config_dict={**common, "pretrained_checkpoint": path,
                                                                     "epochs": 1, "learning_rate": 0.0})
    tested = load_own_checkpoint(result["saved_model_file"])["state_dict"]
    assert all(torch.equal(tested[k], v) for k, v in pretrained["state_dict"].items())
    assert 0 <= result["test_result"]["hit@1"] <= result["test_result"]["hit@10"]
