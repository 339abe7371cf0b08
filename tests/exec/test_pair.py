"""The committed draft/target pair (exec/assets/pair): loads, is consistent, speculates usefully."""
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from exec.pair_acceptance import (QUICK_CHECK, greedy_continuation, load_pair, match_lengths,
                                  measure, walk_accepted)

PAIR = Path(__file__).resolve().parents[2] / "exec" / "assets" / "pair"
pytestmark = pytest.mark.skipif(not (PAIR / "train_log.json").exists(),
                                reason=f"no trained pair at {PAIR}: run python -m exec.train_pair")


@pytest.fixture(scope="module")
def pair():
    torch.set_num_threads(2)
    return load_pair(PAIR)


@pytest.fixture(scope="module")
def log():
    return json.loads((PAIR / "train_log.json").read_text())


def test_configs_are_llama_and_share_vocab():
    cfgs = {m: json.loads((PAIR / m / "config.json").read_text()) for m in ("target", "draft")}
    for cfg in cfgs.values():
        assert cfg["architectures"] == ["LlamaForCausalLM"]
        assert cfg["torch_dtype"] == "float32"
        assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (0, 1)
    assert cfgs["target"]["vocab_size"] == cfgs["draft"]["vocab_size"] == 4096
    assert cfgs["target"]["max_position_embeddings"] == cfgs["draft"]["max_position_embeddings"]
    # same tokenizer byte for byte, so token ids mean the same thing to both models
    assert (PAIR / "target" / "tokenizer.json").read_bytes() == \
        (PAIR / "draft" / "tokenizer.json").read_bytes()


def test_draft_much_smaller_and_size_budget(pair, log):
    target, draft = pair
    n_t = sum(p.numel() for p in target.parameters())
    n_d = sum(p.numel() for p in draft.parameters())
    assert n_d * 3 < n_t, (n_d, n_t)
    assert (log["target"]["params"], log["draft"]["params"]) == (n_t, n_d)
    size = sum(f.stat().st_size for f in PAIR.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"pair assets are {size / 2**20:.1f} MiB > 25 MiB"


def test_tokenizer_round_trips_code():
    tok = transformers.AutoTokenizer.from_pretrained(PAIR / "target")
    code = "def f(x, *, y=None):\n\tif x:\n        return {'a': [1, 2]}  # ünïcode ✓\n\n\n"
    ids = tok(code)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == code
    stdlib_src = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    assert tok.decode(tok(stdlib_src)["input_ids"], skip_special_tokens=True) == stdlib_src


def test_log_records_training_and_held_out_files(log):
    assert len(log["held_out_files"]) >= 10
    prompts = [json.loads(x) for x in (PAIR / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 200
    assert {p["source_file"] for p in prompts} <= set(log["held_out_files"])
    assert all(64 <= p["num_prompt_tokens"] <= 256 for p in prompts)
    for m in ("target", "draft"):
        assert np.isfinite(log[m]["held_out_loss"]) and log[m]["held_out_loss"] < 6.0
    assert log["target"]["held_out_loss"] < log["draft"]["held_out_loss"]


def test_prompt_text_and_ids_agree():
    tok = transformers.AutoTokenizer.from_pretrained(PAIR / "target")
    for line in (PAIR / "prompts.jsonl").read_text().splitlines()[:20]:
        rec = json.loads(line)
        assert tok(rec["prompt"])["input_ids"] == rec["prompt_token_ids"]


def test_logged_acceptance_meets_floor(log):
    acc = log["acceptance_k4"]
    assert acc["k"] == 4 and acc["accepted_length_counts_bonus_token"]
    assert acc["mean_accepted_length"] >= 2.0
    hist = {int(k): v for k, v in acc["accepted_length_histogram"].items()}
    assert sum(hist.values()) == acc["num_positions"]
    mean_from_hist = sum(k * v for k, v in hist.items()) / acc["num_positions"]
    assert mean_from_hist == pytest.approx(acc["mean_accepted_length"])


def test_single_pass_match_equals_explicit_drafting(pair):
    """The one-forward-pass m(p) must equal drafting k tokens step by step from each prefix."""
    target, draft = pair
    prompt = json.loads((PAIR / "prompts.jsonl").read_text().splitlines()[0])["prompt_token_ids"]
    k = 4
    cont = greedy_continuation(target, prompt, 24)
    fast = match_lengths(draft, prompt, cont, k)
    for p in range(0, len(fast), 3):
        seq = list(prompt) + cont[:p]
        m = 0
        with torch.no_grad():
            for j in range(k):
                nxt = int(draft(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
                if nxt != cont[p + j]:
                    break
                m += 1
                seq.append(nxt)
        assert fast[p] == m, f"position {p}: single pass {fast[p]} vs explicit {m}"


def test_walk_accepted():
    # p=0: m=4 -> 5 tokens; p=5: m=1 -> 2; p=7: m=2 -> 3; p=10 is past the scorable range
    assert walk_accepted(np.array([4, 0, 0, 0, 0, 1, 0, 2, 0]), 4) == [5, 2, 3]
    assert walk_accepted(np.array([0, 0]), 4) == [1, 1]


def test_quick_recomputation_agrees_with_log(pair, log):
    """Re-measure on 5 prompts: catches weights that no longer match the logged numbers."""
    target, draft = pair
    logged = log["acceptance_quick_check"]
    quick = measure(PAIR, **QUICK_CHECK, target=target, draft=draft)
    # same prompts, same greedy decoding: only float noise may differ
    assert quick["num_positions"] == logged["num_positions"]
    assert quick["mean_accepted_length"] == pytest.approx(logged["mean_accepted_length"], abs=0.05)
    # and the short measurement is in line with the full one
    assert abs(quick["mean_accepted_length"] - log["acceptance_k4"]["mean_accepted_length"]) < 1.0
