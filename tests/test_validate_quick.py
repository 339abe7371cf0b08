"""``python -m experiments.validate --quick`` end to end (profile + live + sim)."""
import json

import pytest

pytest.importorskip("vllm")

from exec.config import ASSETS_PAIR  # noqa: E402


@pytest.mark.live
@pytest.mark.slow
def test_validate_quick_prints_json(tmp_path_factory, tmp_path, capsys):
    from experiments.validate import main
    pair = ASSETS_PAIR
    if not (pair / "draft" / "config.json").exists():
        from exec.tiny_pair import make_tiny_pair
        pair = make_tiny_pair(tmp_path_factory.mktemp("pair"), noise=0.05)
    main(["--quick", "--pair", str(pair), "--out", str(tmp_path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    res = json.loads(last)
    for key in ("cells", "max_mean_ttft_err", "max_mean_tpot_err", "max_p99_tpot_err"):
        assert key in res
    assert len(res["cells"]) == 2 and len(res["details"]) == 2
    for cell in res["details"]:
        assert cell["live"]["num_failed"] == 0 and cell["sim"]["num_failed"] == 0
        # `none` runs plain vLLM (no drafter, nothing to replay); speculative cells replay
        assert cell["acceptance"] == ("none needed (plain vLLM, no drafter)"
                                      if cell["policy"] == "none" else "replay")
        assert cell["live"]["mean_tpot"] > 0 and cell["sim"]["mean_tpot"] > 0
    assert (tmp_path / "validate_table.md").read_text().startswith("| load")
    assert (tmp_path / "cells").is_dir()
