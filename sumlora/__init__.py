"""sumlora: the library shared by the DVC stages of the QLoRA dialogue-summarization pipeline."""
