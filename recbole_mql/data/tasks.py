"""The generation tasks of MQL4GRec (paper, section 3.3), each defined once.

A sample of a task is written as its input, after the task's prefix token where it has one, in the
codes of the ``source`` modality (a user's history, or one item for an item task), and its label,
the target item's code in the ``target`` modality.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """One generation task.

    Attributes:
        name: the name ``tasks`` lists in the model's YAML.
        source, target: modality (``"text"`` / ``"image"``) of the input codes and of the generated code.
        prefix: the token that tells the model the task, None for the two next-item tasks.
        item_task: the input is one item, the label that same item in the other modality (the paper's
            alignment tasks); otherwise the input is a history and the label its next item.
        directions: fusionseqrec's two directions; each sample is written as the first when a fair coin
            drawn for it comes up (p = 0.5), else as the second. Empty for a task of one direction.
    """

    name: str
    source: str = None
    target: str = None
    prefix: str = None
    item_task: bool = False
    directions: tuple = ()

    def written_as(self):
        """The tasks a sample of this one is written as: its directions, or itself."""
        return self.directions or (self,)

    @property
    def modalities(self):
        """The modalities whose codes the task reads or writes."""
        return frozenset(m for d in self.written_as() for m in (d.source, d.target))


_FUSION_DIRECTIONS = (
    Task("fusionseqrec_t2i", "text", "image", "<task_text2image_seq>"),
    Task("fusionseqrec_i2t", "image", "text", "<task_image2text_seq>"),
)
# The tasks a model may train on, by name.
TASKS = {task.name: task for task in (
    Task("seqrec", "text", "text"),
    Task("seqimage", "image", "image"),
    Task("fusionseqrec", directions=_FUSION_DIRECTIONS),
    Task("item2image", "text", "image", "<task_item2image>", item_task=True),
    Task("image2item", "image", "text", "<task_image2item>", item_task=True),
)}
# Prefix token of every task written with one, by name (fusionseqrec's directions included). The
# vocabulary lists them in this order, so the order fixes their token ids in every checkpoint.
PREFIX_TOKENS = {d.name: d.prefix for task in TASKS.values() for d in task.written_as() if d.prefix}
