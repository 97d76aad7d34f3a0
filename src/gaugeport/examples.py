"""Inputs for the README's examples, built offline in seconds: ``python -m gaugeport.examples KIND ...``.

Every example in the README starts from an empty directory; the few inputs that a user would bring
from elsewhere (a checkpoint, a quantized release, an SAE, a Trainer run, some text) are made here
from the tiny test models and the built-in corpus, so the examples run as written without the hub:

* ``checkpoint MODEL_TYPE OUT``: a tiny random checkpoint (d=32, 2 layers, norm gains of both signs)
  with a word-level tokenizer over the built-in corpus's vocabulary (``tokenizer.json``);
* ``fp8 OUT``: a tiny Llama released as FP8 e4m3 weights with one float32 scale per 16 x 16 block;
* ``sae CHECKPOINT OUT``: an SAELens ``standard`` SAE with random weights for that checkpoint's width;
* ``trainer CHECKPOINT OUT``: a Hugging Face Trainer run of a few AdamW steps from that checkpoint,
  saved as ``OUT/checkpoint-N/`` (weights, ``optimizer.pt``, scheduler, trainer state);
* ``text OUT``: built-in corpus documents as ``.txt`` (one per line) or ``.jsonl`` (``{"text": ...}``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXAMPLE_VOCAB = 128  # the built-in corpus has 125 words; the example checkpoints hold them all
FP8_BLOCK = 16


def save_tokenizer(path: str | Path) -> Path:
    """Write a word-level tokenizer over the built-in corpus's vocabulary (``tokenizer.json`` and its config)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from gaugeport.estimate import corpus

    words = corpus.tokenizer().vocab
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
           "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": 512}
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    return path


def save_checkpoint(model_type: str, path: str | Path, seed: int = 0) -> Path:
    """A tiny random checkpoint of ``model_type`` with the built-in corpus's tokenizer saved beside it."""
    from gaugeport.models.tiny import save_tiny

    out = save_tiny(model_type, path, seed=seed, vocab_size=EXAMPLE_VOCAB)
    return save_tokenizer(out)


def save_fp8_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """A tiny Llama whose linear weights are FP8 e4m3 with one ``weight_scale_inv`` per 16 x 16 block
    (the DeepSeek-V3 / Qwen3-FP8 layout: ``W = w * s[block]``)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = Path(path)
    save_checkpoint("llama", path, seed=seed)
    sd = load_file(str(path / "model.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for name, w in sd.items():
        if not (name.endswith("proj.weight") and w.ndim == 2):
            out[name] = w
            continue
        rows, cols = w.shape
        blocks = w.reshape(rows // FP8_BLOCK, FP8_BLOCK, cols // FP8_BLOCK, FP8_BLOCK)
        scale = blocks.abs().amax(dim=(1, 3)) / 448.0  # e4m3's largest finite value
        q = (blocks / scale[:, None, :, None]).reshape(rows, cols).to(torch.float8_e4m3fn)
        out[name], out[name + "_scale_inv"] = q, scale.contiguous()
    save_file(out, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    return path


def save_sae(checkpoint: str | Path, path: str | Path, site: str = "resid_post.1", expansion: int = 4,
             seed: int = 0) -> Path:
    """An SAELens ``standard`` SAE directory (``cfg.json`` + ``sae_weights.safetensors``, random weights) on
    ``site`` of ``checkpoint``'s residual stream; ``sae_lens.SAE.load_from_disk`` reads it."""
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    d = int(cfg.get("hidden_size") or cfg["n_embd"])
    g = torch.Generator().manual_seed(seed)
    w_enc = torch.randn(d, expansion * d, generator=g) / d**0.5
    weights = {"W_enc": w_enc, "W_dec": w_enc.T.contiguous(), "b_enc": torch.zeros(expansion * d),
               "b_dec": torch.randn(d, generator=g) * 0.1}
    layer = site.rsplit(".", 1)[-1]
    sae_cfg = {"architecture": "standard", "d_in": d, "d_sae": expansion * d, "dtype": "float32", "device": "cpu",
               "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
               "metadata": {"sae_lens_version": "6.0.0", "sae_lens_training_version": "6.0.0",
                            "hook_name": f"blocks.{layer}.hook_resid_post", "model_name": str(checkpoint)}}
    path = Path(path)
    path.mkdir(parents=True)
    save_file(weights, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps(sae_cfg, indent=2))
    return path


def save_trainer_run(checkpoint: str | Path, path: str | Path, steps: int = 4) -> Path:
    """Train ``checkpoint`` for ``steps`` AdamW steps with a Hugging Face Trainer; returns ``path/checkpoint-N``."""
    import torch
    import transformers
    from transformers import Trainer, TrainingArguments

    from gaugeport.estimate.corpus import builtin_token_ids

    class Tokens(torch.utils.data.Dataset):
        def __init__(self, ids: torch.Tensor) -> None:
            self.ids = ids

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    transformers.utils.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    ids = torch.as_tensor(builtin_token_ids(32, 16, seed=0, vocab_size=model.config.vocab_size))
    args = TrainingArguments(output_dir=str(path), max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-3,
                             save_strategy="steps", save_steps=steps, report_to=[], use_cpu=True, disable_tqdm=True,
                             seed=0, logging_strategy="no")
    Trainer(model=model.train(), args=args, train_dataset=Tokens(ids)).train()
    return Path(path) / f"checkpoint-{steps}"


def save_text(path: str | Path, n_docs: int = 400, seed: int = 0) -> Path:
    """Built-in corpus documents: ``.jsonl`` writes ``{"text": ...}`` per line, anything else one document a line."""
    from gaugeport.estimate.corpus import sample_documents

    path = Path(path)
    docs = sample_documents(n_docs, seed=seed)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": d.text}) + "\n" for d in docs))
    else:
        path.write_text("".join(d.text + "\n" for d in docs))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gaugeport.examples", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("checkpoint", help="a tiny random checkpoint with a tokenizer")
    p.add_argument("model_type")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("fp8", help="a tiny Llama as an FP8 block-quantized release")
    p.add_argument("out")
    p = sub.add_parser("sae", help="an SAELens SAE (random weights) for a checkpoint's width")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--site", default="resid_post.1")
    p = sub.add_parser("trainer", help="a Hugging Face Trainer run of a few steps from a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=4)
    p = sub.add_parser("text", help="built-in corpus text as .txt or .jsonl")
    p.add_argument("out")
    p.add_argument("--docs", type=int, default=400)
    a = parser.parse_args(argv)
    if Path(a.out).exists():
        parser.exit(2, f"error: {a.out} exists\nhint: give a new path (examples never overwrite)\n")
    if a.kind == "checkpoint":
        made = save_checkpoint(a.model_type, a.out, seed=a.seed)
    elif a.kind == "fp8":
        made = save_fp8_checkpoint(a.out)
    elif a.kind == "sae":
        made = save_sae(a.checkpoint, a.out, site=a.site)
    elif a.kind == "trainer":
        made = save_trainer_run(a.checkpoint, a.out, steps=a.steps)
    else:
        made = save_text(a.out, n_docs=a.docs)
    print(f"wrote {made}")


if __name__ == "__main__":
    main(sys.argv[1:])
