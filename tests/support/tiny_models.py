"""Tiny models built in code, for tests where the pipeline matters and the words do not.

They reuse the packaged SmolLM2 tokenizer and chat template (prepared by `make test`) on a
randomly initialised two-layer Llama, so a test loads and generates in milliseconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dagster_platform.lib.packaged_models import llm_model_dir
from dagster_platform.settings import REPO_ROOT

PREPARED_LLM = llm_model_dir(REPO_ROOT / ".state" / "models")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def build_tiny_llm(target: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not (PREPARED_LLM / "tokenizer.json").is_file():
        raise RuntimeError(f"{PREPARED_LLM} is missing: run `dagster-platform models prepare`")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(target)
    for name in TOKENIZER_FILES:
        if (PREPARED_LLM / name).is_file():
            shutil.copy(PREPARED_LLM / name, target / name)
    return target


def build_tiny_adapter(base: Path, target: Path, seed: int = 1, r: int = 4) -> Path:
    """A LoRA adapter on q/v projections with non-zero weights, so it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    peft_model.save_pretrained(target)
    return target


TINY_RECIPE = {
    "lora_r": 4,
    "lora_alpha": 16,
    "lora_target_modules": ["q_proj", "v_proj"],
    "learning_rate": 0.02,
    "max_steps": 6,
    "max_seq_length": 160,
    "batch_size": 8,
    "logging_steps": 2,
}
