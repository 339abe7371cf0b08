import numpy as np
import pytest

from sim.core.config import EngineConfig, SimConfig
from sim.models.cost import RooflineCostModel, make_cost_model
from sim.models.hardware import get_hardware, known_hardware
from sim.core.kv_cache import derive_num_kv_blocks
from sim.models.shapes import get_model, known_models

REQUIRED_MODELS = ["llama-2-7b", "llama-2-13b", "llama-2-70b", "vicuna-7b", "vicuna-33b",
                   "llama-3.1-8b", "llama-3.1-70b", "llama-3.2-1b", "qwen2.5-32b",
                   "qwen2.5-0.5b", "draft-68m", "draft-160m", "embedded-target",
                   "embedded-draft"]


def test_unknown_names_list_known_ones():
    with pytest.raises(KeyError, match="llama-2-7b.*") as err:
        get_model("gpt-5")
    assert "draft-68m" in str(err.value)
    with pytest.raises(KeyError) as err:
        get_hardware("tpu-v9")
    assert "a100-80g" in str(err.value) and "h200" in str(err.value)
    assert set(REQUIRED_MODELS) <= set(known_models())
    assert {"a100-80g", "a100-40g", "l40", "h100", "h200", "cpu-2core"} <= set(known_hardware())


@pytest.mark.parametrize("name,billions", [("llama-2-7b", 6.74), ("llama-2-13b", 13.0),
                                           ("llama-2-70b", 69.0), ("llama-3.1-8b", 8.03),
                                           ("llama-3.1-70b", 70.6), ("qwen2.5-32b", 32.8),
                                           ("llama-3.2-1b", 1.24), ("qwen2.5-0.5b", 0.49),
                                           ("draft-68m", 0.068), ("vicuna-33b", 32.5)])
def test_parameter_counts_match_published_sizes(name, billions):
    assert get_model(name).num_params / 1e9 == pytest.approx(billions, rel=0.03)


def test_vicuna_7b_is_llama_2_7b_shaped_and_kv_sizes():
    a, b = get_model("vicuna-7b"), get_model("llama-2-7b")
    assert a.num_params == b.num_params
    assert b.kv_bytes_per_token == 2 * 32 * 4096 * 2          # 512 KiB per token
    assert get_model("llama-3.1-8b").kv_bytes_per_token == 2 * 32 * 8 * 128 * 2   # GQA


def test_roofline_decode_is_memory_bound_prefill_compute_bound():
    cost = make_cost_model(SimConfig())
    hw = get_hardware("a100-80g")
    decode = cost.target_step_s(1, 1, 1000)
    weights_s = get_model("llama-2-7b").weight_bytes / hw.effective_bandwidth
    assert decode == pytest.approx(weights_s + hw.step_overhead_s, rel=0.05)
    assert 6e-3 < decode < 15e-3                                # ~8-10 ms on an A100
    prefill = cost.target_step_s(4096, 1, 4096 * 4097 // 2)
    assert prefill > 20 * decode
    # a k=4 verify of 32 sequences costs little more than plain decode (memory bound)
    assert cost.target_step_s(160, 32, 32 * 5 * 1000) < 1.3 * cost.target_step_s(32, 32, 32 * 1000)
    assert cost.draft_step_s(1, 1, 100) < decode / 5


@pytest.mark.parametrize("draft", ["draft-68m", "llama-3.2-1b"])
def test_roofline_sync_pass_skips_the_drafts_lm_head(draft):
    """vLLM's k = 0 draft pass returns before the LM head: one decode token of it is
    memory bound, so it costs the full pass less the time to stream the vocabulary
    projection (tied or not), and the same again over many tokens at most."""
    cost = make_cost_model(SimConfig(draft=draft))
    m, hw = get_model(draft), get_hardware("a100-80g")
    head_s = m.vocab_size * m.hidden_size * m.dtype_bytes / hw.effective_bandwidth
    full, sync = cost.draft_step_s(1, 1, 100), cost.draft_sync_step_s(1, 1, 100)
    assert full - sync == pytest.approx(head_s, rel=1e-9)
    assert 0 < sync < full
    many = np.array([64, 4096])
    assert np.all(cost.draft_sync_step_s(many, many, many * 500)
                  < cost.draft_step_s(many, many, many * 500))
    assert cost.draft_sync_step_s(0, 0, 0) == 0.0
    with pytest.raises(ValueError, match="no draft model"):
        make_cost_model(SimConfig(draft="")).draft_sync_step_s(1, 1, 1)


def test_cost_model_broadcasts_like_scalars():
    cost = make_cost_model(SimConfig(model="llama-3.1-70b", hardware="h100", tensor_parallel=4))
    toks = np.array([0, 1, 64, 512, 8192])
    seqs = np.array([0, 1, 16, 4, 8])
    ctx = np.array([0, 500, 64 * 800, 512 * 300, 8192 * 2000])
    vec = cost.target_step_s(toks, seqs, ctx)
    assert vec.shape == (5,) and vec[0] == 0.0
    assert np.allclose(vec, [cost.target_step_s(int(t), int(s), int(c))
                             for t, s, c in zip(toks, seqs, ctx)])
    assert np.all(np.diff(vec) > 0)


def test_tensor_parallel_scales_and_adds_communication():
    one = RooflineCostModel(get_model("llama-2-70b"), None, get_hardware("a100-80g"))
    four = RooflineCostModel(get_model("llama-2-70b"), None, get_hardware("a100-80g", 4))
    assert four.target_step_s(1, 1, 100) < one.target_step_s(1, 1, 100) / 2.5
    with pytest.raises(ValueError, match="no draft model"):
        one.draft_step_s(1, 1, 1)


def test_derived_kv_capacity():
    blocks = derive_num_kv_blocks(SimConfig())
    t, d = get_model("llama-2-7b"), get_model("draft-68m")
    free = 80 * 2 ** 30 * 0.9 - t.weight_bytes - d.weight_bytes
    assert blocks == int(free // ((t.kv_bytes_per_token + d.kv_bytes_per_token) * 16))
    assert 7000 < blocks < 8000
    with pytest.raises(ValueError, match="leave no room"):
        derive_num_kv_blocks(SimConfig(model="llama-2-70b", hardware="a100-40g"))
    assert derive_num_kv_blocks(SimConfig(engine=EngineConfig(num_kv_blocks=5))) == 5


def test_embedded_pair_reads_trained_config(tmp_path, monkeypatch):
    import json
    import sim.models.shapes as models
    placeholder = get_model("embedded-target")
    draft_placeholder = get_model("embedded-draft")
    assert placeholder.vocab_size > 0 and placeholder.num_layers >= 1
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "config.json").write_text(json.dumps({
        "num_hidden_layers": 6, "hidden_size": 384, "intermediate_size": 1536,
        "num_attention_heads": 6, "num_key_value_heads": 2, "vocab_size": 8000,
        "torch_dtype": "float32", "tie_word_embeddings": True}))
    monkeypatch.setattr(models, "EMBEDDED_PAIR_DIR", tmp_path)
    shape = get_model("embedded-target")
    assert (shape.num_layers, shape.hidden_size, shape.num_kv_heads, shape.vocab_size,
            shape.dtype_bytes, shape.tied_embeddings) == (6, 384, 2, 8000, 4, True)
    # no draft/config.json in the new folder: the draft keeps its placeholder shape
    assert get_model("embedded-draft") == draft_placeholder
    assert shape != placeholder
