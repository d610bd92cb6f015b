"""Pre-training one backbone on several datasets through one shared quantitative language."""

import os

import torch

from recbole_mql.data.task_samples import TaskSamples
from recbole_mql.trainer.generative_trainer import GenerativeTrainer


class PretrainTrainer(GenerativeTrainer):
    """Trains the T5 shared by ``models`` (one per dataset, each with its own item code tables)
    on the union of their training samples; keeps the checkpoint of lowest validation token loss
    (the paper's choice for pre-training)."""

    def __init__(self, config, models, train_loaders, valid_loaders):
        backbone = models[0].t5
        if any(m.t5 is not backbone for m in models):
            raise ValueError("pre-training models must share one backbone (model.t5)")
        super().__init__(config, models[0])
        self.models, self.train_loaders, self.valid_loaders = models, train_loaders, valid_loaders
        self.valid_metric_bigger = True  # score = -loss
        self.best_valid_score = float("-inf")
        names = "+".join(loader._dataset.dataset_name for loader in train_loaders)
        stem = os.path.join(self.checkpoint_dir, f"{config['model']}-pretrain-{names}")
        self.saved_model_file, self.last_model_file = stem + ".pth", stem + "-last.pth"

    def _build_samples(self, train_data):
        return [TaskSamples(loader._dataset, model.tasks, model.max_his_len, source=i)
                for i, (model, loader) in enumerate(zip(self.models, self.train_loaders))]

    def _source_model(self, source):
        return self.models[source]

    @torch.no_grad()
    def _valid_epoch(self, valid_data, show_progress=False):
        """(-loss, {"valid_loss": loss}): mean token loss of next-item generation on every validation set."""
        self.model.eval()
        total, tokens = 0.0, 0
        for i, (model, loader) in enumerate(zip(self.models, self.valid_loaders)):
            samples = TaskSamples(loader._dataset, model.tasks, model.max_his_len, source=i)
            for batch in samples.epoch_batches(0, self.config["eval_batch_size"], self.config["seed"]):
                loss, n = model.token_loss(*self._task_inputs(batch))
                total, tokens = total + float(loss), tokens + n
        loss = total / max(tokens, 1)
        return -loss, {"valid_loss": round(loss, 4)}

    def fit_all(self, show_progress=False):
        return self.fit(self.train_loaders, self.valid_loaders, saved=True, show_progress=show_progress)
