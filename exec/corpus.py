"""The training corpus of both trained drafts: the interpreter's standard library.

The sorted top-level ``*.py`` files of the stdlib; every 8th (index % 8 == 3) is held out.
The held-out files give the live prompts (exec/assets/pair/prompts.jsonl); the embedded pair
(exec/train_pair.py) and the SmolLM2 EAGLE head (exec/train_eagle.py) train on the rest.
"""
from __future__ import annotations

import sysconfig
from pathlib import Path

HELD_OUT_EVERY = 8  # every 8th sorted stdlib file (index % 8 == 3) is held out for evaluation


def corpus_files() -> list[Path]:
    """Top-level stdlib sources, sorted so every machine with the same Python picks the same."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    if len(files) < 2 * HELD_OUT_EVERY:
        raise RuntimeError(f"too few stdlib .py files under {stdlib}: {len(files)}")
    return files


def split_files(files: list[Path]) -> tuple[list[Path], list[Path]]:
    held = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY == 3]
    train = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY != 3]
    return train, held


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")
