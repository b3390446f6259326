"""The one prompt template, used by training and by generation alike.

Two styles (``format.prompt``): ``instruct``, a plain-text instruction prompt with a response
header and an end marker (the only choice for a base without a chat template, e.g. Phi-2), and
``chat``, a user turn (``user_message``) rendered by the tokenizer's own chat template, the
summary being the assistant's reply (:mod:`sumlora.tokenizing` renders it; it needs the tokenizer).
Training renders ``prompt + response`` and generation renders the same ``prompt``
with the same function, so the two cannot drift apart. The template travels with the
data (``prompt_template.json``): the tokenize stage writes the one it used beside the
tokenized rows, the train stage copies that file beside the adapter, and generation
reads it from there (the base model's run reads the tokenized data's copy).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from sumlora.core import atomic
from sumlora.core.params import PROMPT_STYLES as STYLES

TEMPLATE_FILE = "prompt_template.json"
# The chat style's user turn. It is also the zero-shot chat baseline's prompt (generate_base_chat), so a
# model fine-tuned in the chat style is asked exactly what the baseline was asked.
CHAT_INSTRUCTION = "Summarize the following conversation in one or two sentences.\n\n{dialogue}"


@dataclass(frozen=True)
class PromptTemplate:
    style: str = "instruct"
    intro: str = ("Below is an instruction that describes a task. "
                  "Write a response that appropriately completes the request.")
    instruction: str = "### Instruct: Summarize the below conversation."
    response_header: str = "### Output:"
    end_marker: str = "### End"
    user_message: str = CHAT_INSTRUCTION

    @property
    def chat(self) -> bool:
        return self.style == "chat"

    def user_turn(self, dialogue: str) -> list[dict]:
        """The chat style's conversation before the reply: one user turn."""
        return [{"role": "user", "content": self.user_message.format(dialogue=dialogue.strip())}]

    def stop_strings(self) -> list[str]:
        """Text that ends a summary besides the model's end tokens (the chat style ends at its end of turn)."""
        return [] if self.chat else [self.end_marker]

    def render_prompt(self, dialogue: str) -> str:
        """Everything the model sees before the summary (training and inference)."""
        return f"{self.intro}\n\n{self.instruction}\n\n{dialogue.strip()}\n\n{self.response_header}\n"

    def render_response(self, summary: str) -> str:
        """The training target: the summary, then the end marker (EOS is added by the tokenizer step)."""
        return f"{summary.strip()}\n{self.end_marker}"

    def extract_summary(self, generated: str) -> str:
        """The summary from generated text (special tokens dropped): everything before the end marker, stripped."""
        return generated.strip() if self.chat else generated.split(self.end_marker, 1)[0].strip()

    def min_tokens(self) -> int:
        """A lower bound on the tokens of any training row: the words of the fixed text around a one-word
        dialogue and summary (tokenizers that split at spaces give each word at least one token), plus EOS."""
        if self.chat:
            return len(self.user_message.format(dialogue="x").split()) + 2
        return len((self.render_prompt("x") + self.render_response("y")).split()) + 1

    def save(self, directory: str | Path) -> None:
        atomic.write_json(Path(directory) / TEMPLATE_FILE, dataclasses.asdict(self))

    @classmethod
    def load(cls, where: str | Path) -> PromptTemplate:
        """The template in ``where``: a ``prompt_template.json`` file, or a directory holding one."""
        path = Path(where)
        path = path / TEMPLATE_FILE if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no prompt template here (it is written by the tokenize stage "
                                    "and copied beside the adapter by the train stage)")
        data = json.loads(path.read_text(encoding="utf-8"))
        fields = {f.name for f in dataclasses.fields(cls)}
        data.setdefault("style", "instruct")  # written before the chat style existed
        data.setdefault("user_message", CHAT_INSTRUCTION)
        if set(data) != fields or data["style"] not in STYLES:
            raise ValueError(f"{path}: expected keys {sorted(fields)} with style one of {STYLES}, got "
                             f"{sorted(data)} (style {data['style']!r})")
        return cls(**data)


DEFAULT = PromptTemplate()


def template_for(style: str) -> PromptTemplate:
    """The template of a ``format.prompt`` style."""
    return PromptTemplate(style=style)


def check_template_fits(params) -> list[str]:
    """The params problem the template can find without a model: a ``tokenize.max_length`` below the
    fewest tokens any training row can have (a check for :func:`sumlora.core.params.load_params`)."""
    cap, need = params.tokenize.max_length, template_for(params.format.prompt).min_tokens()
    if cap is None or cap >= need:
        return []
    return [f"tokenize.max_length: {cap} cannot hold any training row: the prompt template alone has "
            f"{need - 1} words (set it to a few hundred or more, or null for the model's context length)"]
