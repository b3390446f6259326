"""QLoRA training with transformers' Trainer and peft, logged with dvclive, resumable.

Read in this order:
- ``checkpoints``: the resume policy (run fingerprint, completion markers, when a checkpoint is
  resumed and when the directory is cleared), top to bottom in one file;
- ``batching``: the training rows, their order (length grouping) and the padding collator;
- ``trainer``: the loss on summary tokens only, the Trainer subclass, the TrainingArguments and
  the callbacks (dvclive curves, checkpoint markers);
- ``run``: ``train()``, which puts them together and returns the trained model and its numbers;
  the train stage (stages/train.py) writes every output.
"""
