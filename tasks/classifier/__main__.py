"""``python -m tasks.classifier``: one process of the classifier stage, as torchrun launches it."""

from tasks.classifier import fine_tune
from tasks.support import trainer

trainer.stage_main(fine_tune)
