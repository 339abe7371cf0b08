"""The EAGLE head's trainer on a tiny random Llama: held-out batches, agreement, early stopping."""
from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from exec.eagle_data import TOP_K, data_files, load_data
from exec.eagle_head import EagleHead
from exec.train_eagle import (EagleTrainConfig, distill_cross_entropy, train, unrolled_passes,
                              validation_agreement)

VOCAB = 64


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def sequences(target, num: int, seed: int, num_prompt: int = 6, length: int = 24):
    """Random token sequences with the target's features and top-k, stored as exec.eagle_data
    stores them (a tiny random target's greedy output repeats one token: nothing to learn)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for _ in range(num):
            ids = torch.randint(VOCAB, (length,), generator=gen)
            hidden = target.model(input_ids=ids[None]).last_hidden_state[0]
            top = target.lm_head(hidden).topk(TOP_K, -1).indices
            out.append({"ids": ids, "hidden": hidden.half(), "top": top.int(),
                        "num_prompt": num_prompt})
    return out


def test_validation_files_are_the_last_greedy_batches(tmp_path):
    for name in ("data_0000", "data_0001", "data_0002", "data_tf_0000", "data_tf_0001"):
        torch.save([{"name": name}], tmp_path / f"{name}.pt")
    train_paths, val_paths = data_files(tmp_path, 1)
    assert [p.stem for p in val_paths] == ["data_0002"]
    assert [p.stem for p in train_paths] == ["data_0000", "data_0001", "data_tf_0000",
                                             "data_tf_0001"]
    assert load_data(val_paths) == [{"name": "data_0002"}]
    assert data_files(tmp_path, 0)[1] == []
    with pytest.raises(ValueError, match="3 greedy batches.*--val-files"):
        data_files(tmp_path, 3)


def test_pass_one_agreement_matches_a_direct_count(target):
    seqs = sequences(target, 3, seed=1)
    head = EagleHead(target.config)
    head.init_from_target(target, layer=1)
    embed, lm_head = target.model.embed_tokens.weight, target.lm_head.weight
    hits = num = 0
    with torch.no_grad():
        for s in seqs:        # position t reads f_t and x_{t+1}; its label is the target's x_{t+2}
            ids, feat = s["ids"], s["hidden"].float()
            n = len(ids) - 2
            (_, out), = list(unrolled_passes(head, embed[ids[1:n + 1]][None], feat[None, :n], 1))
            pred = (out[0] @ lm_head.T).argmax(-1)
            label = s["top"][1:n + 1, 0].long()
            live = torch.arange(n) >= s["num_prompt"] - 1
            hits += int((pred == label)[live].sum())
            num += int(live.sum())
    agree = validation_agreement(head, embed, lm_head, seqs, depth=2)
    assert agree[0] == pytest.approx(hits / num)
    assert 0.0 <= agree[1] <= 1.0


def test_early_stopping_exports_the_best_validated_head(target, tmp_path):
    train_seqs, val_seqs = sequences(target, 8, seed=2), sequences(target, 4, seed=3)
    cfg = replace(EagleTrainConfig(), steps=8, batch_sequences=4, depth=2, lr=0.3,
                  warmup_steps=1, num_negatives=8, eval_every=2, val_files=1)
    head = EagleHead(target.config)
    head.init_from_target(target, layer=1)
    log = train(head, target, train_seqs, cfg, tmp_path, save_every=100, val_seqs=val_seqs)
    evals = [row for row in log if "val_agreement" in row]
    assert [row["step"] for row in evals] == [0, 2, 4, 6, 8]
    scores = [sum(row["val_agreement"]) / 2 for row in evals]
    best = evals[max(range(len(scores)), key=scores.__getitem__)]
    assert evals[-1]["best_step"] == best["step"] < cfg.steps   # training went on past it
    last = torch.load(tmp_path / "head_ckpt.pt")["head"]
    kept = torch.load(tmp_path / "head_best.pt")
    assert all(torch.isfinite(v).all() for v in kept.values())
    assert any(not torch.equal(last[k], kept[k]) for k in kept)
    assert all(torch.equal(v, kept[k]) for k, v in head.state_dict().items())
    agree = validation_agreement(head, target.model.embed_tokens.weight,
                                 target.lm_head.weight, val_seqs, depth=2)
    assert agree == pytest.approx(best["val_agreement"], abs=1e-4)



def test_soft_cross_entropy_is_least_at_the_targets_distribution():
    """Soft labels: the loss's gradient vanishes where the head's logits equal the target's
    (up to a constant), and the hard loss still pushes them towards the greedy token."""
    gen = torch.Generator().manual_seed(5)
    teacher = torch.randn(6, 10, generator=gen) * 2
    label = teacher.argmax(-1)
    for soft_weight, vanishes in ((1.0, True), (0.5, False), (0.0, False)):
        logits = (teacher + 3.0).clone().requires_grad_(True)
        distill_cross_entropy(logits, label, teacher, soft_weight).backward()
        assert (logits.grad.abs().max() < 1e-6) == vanishes, soft_weight
    hard = distill_cross_entropy(teacher, label, None, 0.0)
    assert hard == pytest.approx(float(torch.nn.functional.cross_entropy(teacher, label)))
    mixed = distill_cross_entropy(teacher, label, teacher, 0.25)
    entropy = float(-(teacher.softmax(-1) * teacher.log_softmax(-1)).sum(-1).mean())
    assert mixed == pytest.approx(0.75 * float(hard) + 0.25 * entropy, rel=1e-5)


def test_unrolled_passes_draft_as_the_live_chain(target):
    """Pass j at position i of the training unroll is pass j of the chain started at
    i - j + 1 as vLLM drafts it (``eagle_chain_hits``: the chain's own keys of passes 2..j
    in its KV cache), so training meets what the live drafter computes at every depth."""
    from exec.match_lengths import eagle_chain_hits
    (s,) = sequences(target, 1, seed=4, length=20)
    head = EagleHead(target.config)
    head.init_from_target(target, layer=1)
    torch.manual_seed(5)
    with torch.no_grad():          # init closes the residual branches: open them
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    embed, lm_head = target.model.embed_tokens.weight, target.lm_head.weight
    ids, feat = s["ids"], s["hidden"].float()
    k_max = 4
    with torch.no_grad():
        _, chain_prob = eagle_chain_hits(head, embed, lm_head, feat, ids, k_max)
        n = len(ids) - 1                  # position t reads f_t and x_{t+1}, as the chain's
        passes = dict(unrolled_passes(head, embed[ids[1:n + 1]][None], feat[None, :n], k_max))
    for j, out in passes.items():
        prob = torch.softmax(out[0] @ lm_head.T, -1).max(-1).values
        starts = torch.arange(n - j + 1)                 # chains whose pass j is in range
        assert torch.allclose(prob[starts + j - 1], torch.as_tensor(chain_prob[starts, j - 1]),
                              atol=1e-5), f"pass {j}"


def test_bf16_training_keeps_the_residual_stream_in_fp32(target, tmp_path):
    """Under ``bf16`` only the matmuls round: the head's features stay fp32 and near the fp32
    pass's, and a short run trains to finite weights."""
    (s,) = sequences(target, 1, seed=6)
    head = EagleHead(target.config)
    head.init_from_target(target, layer=1)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    embed = target.model.embed_tokens.weight
    ids, feat = s["ids"], s["hidden"].float()
    n = len(ids) - 2
    with torch.no_grad():
        exact = dict(unrolled_passes(head, embed[ids[1:n + 1]][None], feat[None, :n], 3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = dict(unrolled_passes(head, embed[ids[1:n + 1]][None], feat[None, :n], 3))
    for j in exact:
        assert rounded[j].dtype == torch.float32
        assert torch.allclose(rounded[j], exact[j], rtol=0.05, atol=0.05), j
    cfg = replace(EagleTrainConfig(), steps=3, batch_sequences=2, depth=2, warmup_steps=1,
                  num_negatives=8, soft_weight=0.5, bf16=True)
    train(head, target, sequences(target, 4, seed=8), cfg, tmp_path, save_every=100)
    assert all(torch.isfinite(p).all() for p in head.parameters())
