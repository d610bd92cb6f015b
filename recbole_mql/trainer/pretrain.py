"""Pre-training one backbone on several datasets through one shared quantitative language.

The datasets' samples stream from compact sequence stores (4 bytes an interaction and 4 a sample,
see ``recbole_mql.data.sequence_store``): each dataset is loaded, compacted and its RecBole tables
freed before the next, so memory grows with the interactions, not with RecBole's 50-item rows.
"""

import os

import torch

from recbole_mql.data.task_samples import StreamingTaskSamples
from recbole_mql.trainer.generative_trainer import GenerativeTrainer


class PretrainTrainer(GenerativeTrainer):
    """Trains the T5 shared by ``models`` (one per dataset, each with its own item code tables)
    on the union of the training samples of ``stores`` (``stores[i]`` feeds ``models[i]``); keeps
    the checkpoint of lowest validation token loss (the paper's choice for pre-training)."""

    def __init__(self, config, models, stores):
        backbone = models[0].t5
        if any(m.t5 is not backbone for m in models):
            raise ValueError("pre-training models must share one backbone (model.t5)")
        if len(models) != len(stores):
            raise ValueError(f"{len(models)} models for {len(stores)} sequence stores: give one store per model")
        super().__init__(config, models[0])
        self.models, self.stores = models, stores
        self.valid_metric_bigger = True  # score = -loss
        self.best_valid_score = float("-inf")
        names = "+".join(store.dataset_name for store in stores)
        stem = os.path.join(self.checkpoint_dir, f"{config['model']}-pretrain-{names}")
        self.saved_model_file, self.last_model_file = stem + ".pth", stem + "-last.pth"

    def _samples(self, split):
        """Training samples of every task, or the validation samples the best checkpoint is chosen
        on: next-item (seqrec) only, as the authors', where a dataset has text codes."""
        out = []
        for i, (model, store) in enumerate(zip(self.models, self.stores)):
            tasks = model.tasks
            if split == "valid" and "seqrec" in tasks:
                tasks = ["seqrec"]
            out.append(StreamingTaskSamples(store, tasks, model.max_his_len, source=i, split=split,
                                            mixing=self.config["batch_mixing"] or "task"))
        return out

    def _build_samples(self, train_data):
        return self._samples("train")

    def _source_model(self, source):
        return self.models[source]

    @torch.no_grad()
    def _valid_epoch(self, valid_data, show_progress=False):
        """(-loss, {"valid_loss": loss}): mean token loss on every dataset's validation samples (each
        user's second-to-last item), next-item task (seqrec) where the dataset has it."""
        self.model.eval()
        total, tokens = 0.0, 0
        for samples in self._samples("valid"):
            model = self.models[samples.source]
            for batch in samples.epoch_batches(0, self.config["eval_batch_size"], self.config["seed"]):
                loss, n = model.token_loss(*self._task_inputs(batch))
                total, tokens = total + float(loss), tokens + n
        loss = total / max(tokens, 1)
        return -loss, {"valid_loss": round(loss, 4)}

    def fit_all(self, show_progress=False):
        return self.fit(self.stores, self.stores, saved=True, show_progress=show_progress)
