"""The one prompt template, used by training and by generation alike.

Training renders ``prompt + response`` and generation renders the same ``prompt``
with the same function, so the two cannot drift apart. The train stage saves the
template beside the adapter (``prompt_template.json``) and generation with an
adapter loads it from there.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from sumlora import atomic

TEMPLATE_FILE = "prompt_template.json"


@dataclass(frozen=True)
class PromptTemplate:
    intro: str = ("Below is an instruction that describes a task. "
                  "Write a response that appropriately completes the request.")
    instruction: str = "### Instruct: Summarize the below conversation."
    response_header: str = "### Output:"
    end_marker: str = "### End"

    def render_prompt(self, dialogue: str) -> str:
        """Everything the model sees before the summary (training and inference)."""
        return f"{self.intro}\n\n{self.instruction}\n\n{dialogue.strip()}\n\n{self.response_header}\n"

    def render_response(self, summary: str) -> str:
        """The training target: the summary, then the end marker (EOS is added by the tokenizer step)."""
        return f"{summary.strip()}\n{self.end_marker}"

    def extract_summary(self, generated: str) -> str:
        """The summary from generated text: everything before the end marker, stripped."""
        return generated.split(self.end_marker, 1)[0].strip()

    def min_tokens(self) -> int:
        """A lower bound on the tokens of any training row: the words of the fixed text around a one-word
        dialogue and summary (tokenizers that split at spaces give each word at least one token), plus EOS."""
        return len((self.render_prompt("x") + self.render_response("y")).split()) + 1

    def save(self, directory: str | Path) -> None:
        atomic.write_json(Path(directory) / TEMPLATE_FILE, dataclasses.asdict(self))

    @classmethod
    def load(cls, directory: str | Path) -> "PromptTemplate":
        path = Path(directory) / TEMPLATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no prompt template beside the adapter "
                                    "(was it written by the train stage?)")
        data = json.loads(path.read_text(encoding="utf-8"))
        fields = {f.name for f in dataclasses.fields(cls)}
        if set(data) != fields:
            raise ValueError(f"{path}: expected keys {sorted(fields)}, got {sorted(data)}")
        return cls(**data)


DEFAULT = PromptTemplate()

# The zero-shot baseline: a plain instruction through the model's own chat template.
CHAT_INSTRUCTION = "Summarize the following conversation in one or two sentences.\n\n{dialogue}"


def chat_messages(dialogue: str) -> list[dict]:
    """The chat-template baseline's conversation: one user turn asking for a summary."""
    return [{"role": "user", "content": CHAT_INSTRUCTION.format(dialogue=dialogue.strip())}]
