"""The release: the trained adapter as a model a team can find, trust and load without this repository.

``models/release`` (the release stage) holds:

- ``adapter_model.safetensors`` and ``adapter_config.json``, whose ``base_model_name_or_path`` and
  ``revision`` name the real base (the hub id and commit; for the embedded default SmolLM2-135M-Instruct's
  hub id, the card saying the weights trained on were de-quantized from its GGUF Q4_1 file);
- the tokenizer and ``prompt_template.json``;
- ``generation_config.json``: the fine-tuned generate stage's decoding, read from its run record (greedy or beam
  search, ``max_new_tokens``, its end tokens, and the end marker as a stop string), so ``generate`` reproduces
  the pipeline's summaries without params.yaml;
- ``merged/`` (``release.merged_model``): base + adapter merged, in the dtype the generate stage computed with
  (its run record), loadable
  with plain ``transformers.AutoModelForCausalLM.from_pretrained`` (no peft, no bitsandbytes, no base to fetch);
- ``README.md``: a Hugging Face model card (``huggingface_hub.ModelCard``) with ``model-index`` results
  equal to ``metrics/rouge.json`` (labelled with the split, the number of dialogues and references scored),
  the install line pinned to the tested versions (``requirements.lock``), the seed spread measured by a sweep
  (``sweep/seeds.json``, written by ``python -m sumlora.sweep_report``) when it covers these params, and
  loading code that tests/test_pipeline.py runs;
- ``release.json``: the base's provenance and how the pipeline loaded it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sumlora.core import atomic
from sumlora.prompt import PromptTemplate

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF file was quantized from
DATASET_ID = "knkarthick/dialogsum"  # the Hugging Face copy of DialogSum whose layout the data follows
RELEASE_INFO = "release.json"
ADAPTER_FILES = ("adapter_model.safetensors", "prompt_template.json", "adapter_info.json")
ROUGE_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
SYSTEM_NAMES = {"base": "base model, training prompt", "base_chat": "base model, zero-shot chat prompt",
                "finetuned": "fine-tuned (this adapter)"}


def base_reference(info: dict) -> dict:
    """Where the base came from, from its ``base_info.json``: ``base_model`` (a hub id, or the local directory
    as given in params), ``revision`` (the hub commit, or None), ``hub`` (whether base_model is a hub id), and
    ``statement``, one sentence a reader of the card needs."""
    source = info.get("source", "")
    if source == "embedded":
        return {"base_model": EMBEDDED_HUB_ID, "revision": None, "hub": True,
                "statement": info.get("description") or f"{EMBEDDED_HUB_ID} de-quantized from its GGUF Q4_1 file"}
    if info.get("revision"):
        return {"base_model": source, "revision": info["revision"], "hub": True,
                "statement": f"{source} at commit {info['revision']}"}
    return {"base_model": source, "revision": None, "hub": False,
            "statement": f"the local model directory {source} (not on the Hugging Face hub)"}


def generation_config(base_dir: Path, tokenizer, template: PromptTemplate, run: dict):
    """The decoding of the generate stage's ``run`` record, as a GenerationConfig: greedy or beam search (its
    beams, length penalty, early stopping), ``max_new_tokens``, the base's end tokens plus the tokenizer's EOS, and
    the template's end marker as a stop string."""
    from transformers import GenerationConfig

    from sumlora.generation import end_token_ids

    base = GenerationConfig.from_pretrained(base_dir) if (base_dir / "generation_config.json").is_file() else None
    beams = ({"num_beams": run["num_beams"], "length_penalty": run["length_penalty"], "early_stopping": True}
             if run["num_beams"] > 1 else {"num_beams": 1})
    return GenerationConfig(do_sample=False, **beams, max_new_tokens=run["max_new_tokens"],
                            eos_token_id=end_token_ids(base, tokenizer), pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, stop_strings=template.stop_strings() or None)


MERGED_DIR = "merged"
CARD_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")  # what the card's code imports
MERGED_PACKAGES = ("torch", "transformers")


def pinned(lock: Path, packages: tuple[str, ...]) -> str:
    """``pkg==version`` for each of ``packages``, as ``requirements.lock`` (the tested environment) pins them."""
    versions = {}
    for line in lock.read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            versions[name.lower().replace("_", "-")] = version.split(";")[0].strip()
    missing = [p for p in packages if p not in versions]
    if missing:
        raise ValueError(f"{lock}: no pinned version of {', '.join(missing)}")
    return " ".join(f"{p}=={versions[p]}" for p in packages)


def seed_note(groups: list[dict], params, source: str) -> str:
    """What the card says about training randomness: the scores of these params trained with other seeds, from
    the sweep's ``seeds.json`` groups (:func:`sumlora.sweep_report.seed_groups`) whose configuration is these
    params' (the seed, the split scored and the release's own params aside), or that it was not measured. The
    first match is the newest code's (``seed_groups`` lists them so); the note names the commit the seeds ran on,
    since a later change to the code can change the spread."""
    from sumlora.core.params import config_key, flatten

    mine = flatten(params)
    mine.pop("generate.split", None)
    want = config_key(mine)
    for g in groups:
        theirs = dict(g["params"])
        theirs.pop("generate.split", None)
        if config_key(theirs) == want:
            scores = ", ".join(f"{v:.2f} (seed {k})" for k, v in sorted(g["scores"].items(), key=lambda kv: int(kv[0])))
            name = ROUGE_NAMES.get(g["metric"], g["metric"])
            refs = g["scoring"].replace("all_refs", "all references").replace("first_ref", "first reference")
            return ("The interval covers the choice of test dialogues, not training randomness. Trained with "
                    f"different seeds, these params scored {name} {scores} on the first {g['num_dialogues']} "
                    f"{g['split']} dialogues ({refs}): a spread of {g['spread']:.2f} (`{source}`"
                    + (f", the code of commit {g['code'][:7]}" if g.get("code") else "") + ").")
    return ("The interval covers the choice of test dialogues, not training randomness; the spread over training "
            f"seeds was not measured for these params (`{source}` has no sweep of them).")


def references_per_dialogue(split: str, data: dict) -> str:
    """How many human references each scored dialogue has (the format stage's count for test; one otherwise)."""
    if split != "test":
        return "1"
    counts = sorted(int(k) for k in data.get("format", {}).get("test_dialogues_by_reference_count", {}) or {"1": 0})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


RUN_FIELDS = ("adapter", "compute_dtype", "dequantize_to", "num_beams", "length_penalty", "batch_size",
              "max_new_tokens")


def read_run_record(path: Path) -> dict:
    """The fine-tuned generate stage's run record (stages/generate.py), refused when it lacks a field the release
    needs or records the summaries of the base model."""
    from sumlora.core.errors import DataError

    run = json.loads(path.read_text())
    missing = [k for k in RUN_FIELDS if k not in run]
    if missing:
        raise DataError(f"{path}: not a generate stage's run record (missing {', '.join(missing)}); "
                        "rerun: dvc repro generate_finetuned")
    if not run["adapter"]:
        raise DataError(f"{path}: records the base model's summaries, not the fine-tuned ones")
    return run


def loading(model_params, run: dict) -> dict:
    """How the pipeline loaded the base to generate the scored summaries (recorded in release.json): the 4-bit
    settings of params, the dtypes the fine-tuned generate stage's ``run`` record says it used."""
    return {"load_in_4bit": model_params.load_in_4bit, "quant_type": model_params.quant_type,
            "double_quant": model_params.double_quant, "compute_dtype": run["compute_dtype"],
            "dequantize_to": run["dequantize_to"]}


def load_snippet(ref: dict, load: dict, template: PromptTemplate, batch_size: int, merged: bool = False) -> str:
    """Python that loads the release and summarizes a list ``dialogues`` into ``summaries`` as the pipeline did
    (tests/test_pipeline.py runs it against the pipeline's output): the merged model with plain transformers
    when the release has one, else the base with transformers + peft."""
    if merged:
        lines = [f"model = AutoModelForCausalLM.from_pretrained(release + \"/{MERGED_DIR}\").eval()  # base + adapter"]
        imports = ["from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig"]
        return _snippet(imports, lines, load, template, batch_size)
    if ref["base_model"] == EMBEDDED_HUB_ID and not ref["revision"]:  # the de-quantized GGUF weights trained on
        where = ['base_path = "models/base"  # this repository\'s base: dvc pull models/base (or dvc repro base_model)']
    else:
        where = [f"base_path = {json.dumps(ref['base_model'])}"]
    rev = f", revision={json.dumps(ref['revision'])}" if ref["revision"] else ""
    dtype = f"torch.{load['compute_dtype']}"
    if load["load_in_4bit"]:
        lines = where + [
            f"quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={load['quant_type']!r},",
            f"    bnb_4bit_use_double_quant={load['double_quant']}, bnb_4bit_compute_dtype={dtype})",
            f"base = AutoModelForCausalLM.from_pretrained(base_path{rev}, quantization_config=quantization,",
            f"    dtype={dtype})"]
    else:
        lines = where + [f"base = AutoModelForCausalLM.from_pretrained(base_path{rev}, dtype={dtype})"]
    if load["dequantize_to"]:  # as the generate stage: 4-bit weights de-quantized once, adapter merged in
        d = f"torch.{load['dequantize_to']}"
        lines += [f"base = base.dequantize(dtype={d}).to({d})",
                  "model = PeftModel.from_pretrained(base, release).merge_and_unload().eval()"]
    else:
        lines += ["model = PeftModel.from_pretrained(base, release).eval()"]
    imports = ["from peft import PeftModel",
               "from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GenerationConfig"]
    return _snippet(imports, lines, load, template, batch_size)


def _snippet(imports: list[str], lines: list[str], load: dict, template: PromptTemplate, batch_size: int) -> str:
    if template.chat:
        prompt = [f"USER = {json.dumps(template.user_message)}",
                  "",
                  "def prompt_ids(dialogue):",
                  '    turn = [{"role": "user", "content": USER.replace("{dialogue}", dialogue.strip())}]',
                  "    text = tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)",
                  '    return tokenizer(text, add_special_tokens=False)["input_ids"]']
        cut = "text.strip()"
    else:
        prompt = [f"PROMPT = {json.dumps(template.render_prompt('{dialogue}'))}",
                  "",
                  "def prompt_ids(dialogue):",
                  '    return tokenizer(PROMPT.replace("{dialogue}", dialogue.strip()))["input_ids"]']
        cut = f"text.split({json.dumps(template.end_marker)}, 1)[0].strip()"
    return "\n".join([
        "import torch",
        *imports,
        "",
        'release = "models/release"  # this directory (e.g. where `dvc artifacts get` put it)',
        *lines,
        "tokenizer = AutoTokenizer.from_pretrained(release)",
        "generation_config = GenerationConfig.from_pretrained(release)  # the pipeline's decoding",
        *prompt,
        "",
        "# Batches of the pipeline's size, longest prompts first, left-padded. In float32 these are the pipeline's",
        "# summaries; in bfloat16 or float16 the padding and batch changes the rounding, and the decoding can",
        f"# follow it into other words ({load['dequantize_to'] or load['compute_dtype']} here).",
        f"BATCH = {batch_size}",
        "ids = [prompt_ids(d) for d in dialogues]",
        "order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))",
        "summaries = [None] * len(ids)",
        "for start in range(0, len(order), BATCH):",
        "    rows = order[start:start + BATCH]",
        '    batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, padding_side="left", return_tensors="pt")',
        "    with torch.inference_mode():",
        "        out = model.generate(**batch, generation_config=generation_config, tokenizer=tokenizer)",
        "    for row, i in enumerate(rows):",
        '        text = tokenizer.decode(out[row, batch["input_ids"].shape[1]:], skip_special_tokens=True)',
        f"        summaries[i] = {cut}",
    ])


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A LoRA adapter that summarizes dialogues in one or two sentences, QLoRA-fine-tuned from **{{ base_model }}**
on DialogSum by the dvc pipeline of this repository (`dvc repro`; this card is written by its `release` stage).

**Base model:** {{ base_statement }}.

## Results

ROUGE F1 x100 (`rouge_score`, stemmer on) of the summaries in `{{ scored_file }}`: the first {{ num_dialogues }}
dialogues of the DialogSum {{ split }} split{{ split_note }}, {{ refs }} human reference(s) each, {{ decoding }}.
*All references*: per dialogue the best-matching of its references, then the mean; *first reference*: against
the first reference only. One training run (seed {{ seed }}).

| system | {{ rouge_header }} |
|---|{{ rouge_rule }}|
{{ rouge_rows }}

Gain of the fine-tuned model over the {{ baseline }} ({{ confidence }}% paired bootstrap interval over dialogues,
{{ bootstrap_samples }} resamples), all references: {{ gain }}.

{{ seed_note }}

## Training

- Data: {{ train_rows }} DialogSum training dialogues ({{ train_tokens }} tokens), {{ eval_rows }} validation dialogues
  for the validation loss; rows longer than {{ max_length }} tokens dropped ({{ dropped }} dropped).
- QLoRA: the base loaded in 4 bit ({{ quant }}), LoRA r={{ lora_r }}, alpha={{ lora_alpha }}, dropout={{ lora_dropout }}
  on {{ target_modules }}; {{ trainable }} trainable parameters.
- {{ steps }} optimizer steps, learning rate {{ lr }} ({{ scheduler }}, {{ warmup }} warm-up steps), batch
  {{ batch }} x {{ accum }} accumulated, {{ optim }}, seed {{ seed }}. Final validation loss {{ eval_loss }}.
- Loss on {{ loss_on }}.

## Prompt format

{{ prompt_format }}

## How to load

`pip install {{ install }}` (the versions this release was tested with), then, for a list of dialogue strings
`dialogues` (`#Person1#: ...` lines, as in DialogSum):

```python
{{ snippet }}
```

This computes as the pipeline did ({{ weights }}; batches of {{ gen_batch }}). `generation_config.json` holds
that decoding ({{ decoding }}, at most {{ max_new_tokens }} new tokens, stopping at {{ stops }}).{{ base_note }}

## Intended use and limits

- Short English two-party dialogues like DialogSum's (everyday conversations). Not tested on meetings,
  chats with many speakers, other languages or domains.
- A small model: summaries can miss the point, swap who said what, or state things the dialogue does not
  say. Check them before relying on them.
- Scores come from {{ num_dialogues }} {{ split }} dialogues and one training run; see the interval above.

## Data and license

Trained and scored on DialogSum (Chen et al., Findings of ACL 2021), licensed CC BY-NC-SA 4.0; this adapter
is released under {{ license }}. The card quotes no DialogSum text.
"""


def _fmt_rouge(scores: dict) -> str:
    return " | ".join(f"{scores[t]:.2f}" for t in ROUGE_NAMES)


def model_card(rouge: dict, train: dict, data: dict, params, ref: dict, load: dict, template: PromptTemplate,
               adapter_config: dict, install: str, seed_text: str, merged: bool, run: dict) -> str:
    """The model card (README.md) text: metadata with ``model-index`` results built with huggingface_hub."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    split = rouge["split"]
    name = f"{ref['base_model'].rsplit('/', 1)[-1]}-dialogsum-lora"
    refs = references_per_dialogue(split, data)
    results = [EvalResult(task_type="summarization", task_name="Dialogue summarization", dataset_type=DATASET_ID,
                          dataset_name=f"DialogSum, first {rouge['num_dialogues']} {split} dialogues, offline copy",
                          dataset_split=split, metric_type=t,
                          metric_name=f"{label} (best of {refs} references)",
                          metric_value=rouge["finetuned"]["all_refs"][t])
               for t, label in ROUGE_NAMES.items()]
    card_data = ModelCardData(base_model=ref["base_model"] if ref["hub"] else None, library_name="peft",
                              pipeline_tag="text-generation", license=params.release.license, language="en",
                              datasets=[DATASET_ID], metrics=["rouge"], model_name=name, eval_results=results,
                              tags=["lora", "qlora", "summarization", "dialogue-summarization", "dvc"])
    rows = []
    for scoring, label in (("all_refs", "all references"), ("first_ref", "first reference")):
        for system in ("base", "base_chat", "finetuned"):
            if system in rouge:
                rows.append(f"| {SYSTEM_NAMES[system]}, {label} | {_fmt_rouge(rouge[system][scoring])} |")
    imp = rouge["improvement"]["all_refs"]
    gain = ", ".join(f"{label} {imp[t]['diff']:+.2f} [{imp[t]['ci_low']:+.2f}, {imp[t]['ci_high']:+.2f}]"
                     for t, label in ROUGE_NAMES.items())
    if template.chat:
        prompt_format = ("The dialogue as one user turn through the tokenizer's chat template, the summary being the "
                         f"assistant's reply. The user turn:\n\n```text\n{template.user_message}\n```")
    else:
        prompt_format = (f"A plain-text instruction prompt (no chat template); the model writes the summary, then "
                         f"`{template.end_marker}` and EOS:\n\n```text\n{template.render_prompt('{dialogue}')}"
                         f"{{summary}}\n{template.end_marker}\n```")
    lp = params.lora
    quant = (f"{params.model.quant_type.upper()}, double quantization {'on' if params.model.double_quant else 'off'},"
             f" compute dtype {load['compute_dtype']}") if params.model.load_in_4bit else "off: not quantized"
    merged_dtype = load["dequantize_to"] or load["compute_dtype"]
    weights = (f"`{MERGED_DIR}/`: the 4-bit base de-quantized once to {merged_dtype}, "
               "the adapter merged in, as the generate stage computed" if merged else
               f"the 4-bit base de-quantized once to {load['dequantize_to']}, the adapter merged in"
               if load["dequantize_to"] else "the 4-bit base with the adapter attached" if load["load_in_4bit"]
               else f"the base in {load['compute_dtype']} with the adapter attached")
    stops = " or ".join(["the end tokens"] + [f"`{s}`" for s in template.stop_strings()])
    return str(ModelCard.from_template(
        card_data, template_str=CARD_TEMPLATE, model_name=name, base_model=ref["base_model"],
        base_statement=ref["statement"], num_dialogues=rouge["num_dialogues"], split=split,
        split_note=" (the stand-in split this repository's data follows; comparable with published figures only "
                   "as an approximation)",
        rouge_header=" | ".join(ROUGE_NAMES.values()), rouge_rule="|".join(["---"] * len(ROUGE_NAMES)),
        rouge_rows="\n".join(rows), baseline=SYSTEM_NAMES[rouge["baseline"]],
        confidence=round(rouge["confidence"] * 100), bootstrap_samples=rouge["bootstrap_samples"], gain=gain,
        seed_note=seed_text, scored_file="data/predictions/finetuned.jsonl", refs=refs, install=install,
        base_note=("" if not merged or ref["base_model"] != EMBEDDED_HUB_ID else
                   f" The adapter alone (`adapter_model.safetensors`) was trained on {ref['statement']}: loaded "
                   "onto the hub's weights its summaries differ; use `merged/`."),
        train_rows=data["train"]["kept"], train_tokens=f"{data['train']['tokens']:,}",
        eval_rows=train["eval_rows"], max_length=data["max_length"],
        dropped=data["train"]["dropped_over_length"] + data["validation"]["dropped_over_length"],
        quant=quant, lora_r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout,
        target_modules=", ".join(f"`{m}`" for m in adapter_config["target_modules"]),
        trainable=f"{train['trainable_params']:,}", steps=train["steps"], lr=params.train.learning_rate,
        scheduler=params.train.lr_scheduler, warmup=params.train.warmup_steps, batch=params.train.batch_size,
        accum=params.train.gradient_accumulation_steps, optim=params.train.optim, seed=params.seed,
        eval_loss=train["eval_loss"], loss_on=("the prompt and the reply" if params.tokenize.train_on_prompt else
                                               "the assistant's reply and its end of turn only" if template.chat else
                                               "the summary, its end marker and EOS only"),
        prompt_format=prompt_format, snippet=load_snippet(ref, load, template, run["batch_size"], merged),
        weights=weights,
        decoding=(f"beam search ({run['num_beams']} beams, length penalty {run['length_penalty']})"
                  if run["num_beams"] > 1 else "greedy decoding"), gen_batch=run["batch_size"],
        max_new_tokens=run["max_new_tokens"], stops=stops, license=params.release.license))


def write_release(out_dir: Path, base_dir: Path, adapter_dir: Path, metrics_dir: Path, params, run: dict,
                  lock: Path, seeds: Path) -> dict:
    """Write ``out_dir`` whole from the adapter, the base's tokenizer and info, the metrics, the fine-tuned generate
    stage's ``run`` record (its dtypes, decoding and batch), the tested versions (``lock``) and the sweep's seed
    groups (``seeds``); with ``release.merged_model`` also the merged model, in the dtype that run computed with;
    return release.json."""
    from sumlora.modeling import load_model_and_tokenizer, load_tokenizer, read_base_info

    info = read_base_info(base_dir)
    ref = base_reference(info)
    template = PromptTemplate.load(adapter_dir)
    load = loading(params.model, run)
    dequantize_to = run["dequantize_to"]
    rouge, train, data = (json.loads((metrics_dir / f"{n}.json").read_text()) for n in ("rouge", "train", "data"))
    tok = load_tokenizer(base_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config.update(base_model_name_or_path=ref["base_model"], revision=ref["revision"])
    release = {"base": {**ref, "base_info": info}, "loading": load, "generation": run,
               "adapter_info": json.loads((adapter_dir / "adapter_info.json").read_text())}
    merged = params.release.merged_model
    install = pinned(lock, MERGED_PACKAGES if merged else CARD_PACKAGES)
    seed_text = seed_note(json.loads(seeds.read_text()), params, str(seeds))
    card = model_card(rouge, train, data, params, ref, load, template, config, install, seed_text, merged, run)
    if merged:  # the weights the generate stage computes with: de-quantized once, adapter merged in
        model, _ = load_model_and_tokenizer(base_dir, params.model, adapter_dir,
                                            dequantize_to or load["compute_dtype"])
        model.config.use_cache = True
        release["merged"] = {"dir": MERGED_DIR, "dtype": dequantize_to or load["compute_dtype"]}
    with atomic.output_dir(out_dir) as tmp:
        for name in ADAPTER_FILES:
            shutil.copy2(adapter_dir / name, tmp / name)
        atomic.write_json(tmp / "adapter_config.json", config)
        tok.save_pretrained(tmp)
        generation_config(base_dir, tok, template, run).save_pretrained(tmp)
        atomic.write_text(tmp / "README.md", card)
        if merged:
            model.save_pretrained(tmp / MERGED_DIR, safe_serialization=True)
            tok.save_pretrained(tmp / MERGED_DIR)
            generation_config(base_dir, tok, template, run).save_pretrained(tmp / MERGED_DIR)
        atomic.write_json(tmp / RELEASE_INFO, release)
    return release
