
import numpy as np
import pytest

import traces.azure as azure
from traces.catalog import known_names, load_named, named_path, shared_root
from traces.loaders import load_azure, load_burstgpt, load_file, load_mooncake, sniff_format
from traces.validation import TraceFormatError


def shared_file(name):
    path = named_path(name)
    if not shared_root().is_dir():
        pytest.skip(f"shared data root {shared_root()} absent (set SPECBED_SHARED)")
    assert path.is_file(), f"shared root exists but {path} is missing"
    return path


@pytest.mark.parametrize("name,rows,tag", [("azure_conv", 19366, "azure_conv"),
                                           ("azure_code", 8819, "azure_code"),
                                           ("mooncake_conv", 12031, "mooncake_conv"),
                                           ("mooncake_synthetic", 3993, "mooncake_synthetic")])
def test_real_files_load_completely(name, rows, tag):
    path = shared_file(name)
    tr = load_named(name)
    assert len(tr) == rows and set(tr.dataset) == {tag}
    assert tr.arrival_s[0] == 0.0 and np.all(np.diff(tr.arrival_s) >= 0)
    assert tr.num_prompt_tokens.min() >= 1 and tr.num_output_tokens.min() >= 1
    assert tr.meta["source"] == str(path)


def test_azure_conv_stats():
    path = shared_file("azure_conv")
    tr = load_azure(path)
    assert tr.meta["reader"] == "pyarrow"
    assert tr.arrival_s[-1] == pytest.approx(3501.72, abs=0.01)
    assert np.median(tr.num_prompt_tokens) == 1020 and np.median(tr.num_output_tokens) == 129
    # first row 2023-11-16 18:15:46.6805900, second 18:15:50.9951690
    assert tr.arrival_s[1] == pytest.approx(4.314579, abs=1e-6)


def test_azure_window_and_max_rows_on_real_file():
    path = shared_file("azure_conv")
    full = load_azure(path)
    win = load_azure(path, start_s=600, end_s=900)
    inside = (full.arrival_s >= 600) & (full.arrival_s < 900)
    assert len(win) == inside.sum()
    np.testing.assert_allclose(win.arrival_s, full.arrival_s[inside] - 600)
    assert len(load_azure(path, max_rows=100)) == 100


def write(path, text):
    path.write_text(text)
    return path


AZ24 = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.009930+00:00,100,10\n"
        "2024-05-10 00:00:01.509930+00:00,200,0\n"
        "2024-05-10 02:00:03.009930+02:00,300,30\n")


def test_azure_2024_timezone_format(tmp_path):
    f = write(tmp_path / "AzureLLMInferenceTrace_code_1week.csv", AZ24.replace(",0\n", ",20\n"))
    tr = load_azure(f)
    # +02:00 at 02:00:03 is 00:00:03 UTC
    np.testing.assert_allclose(tr.arrival_s, [0.0, 1.5, 3.0], atol=1e-6)
    assert list(tr.num_output_tokens) == [10, 20, 30] and tr.dataset[0] == "azure_code"
    assert tr.meta["t0_utc"].startswith("2024-05-10 00:00:00.009930")


def test_azure_zero_output_raises_or_drops(tmp_path):
    f = write(tmp_path / "conv_1week.csv", AZ24)
    with pytest.raises(TraceFormatError, match=r"line 3: .*GeneratedTokens.*zero"):
        load_azure(f)
    tr = load_azure(f, drop_zero_output=True)
    assert len(tr) == 2 and tr.meta["num_zero_output_dropped"] == 1


GOOD = ["2023-11-16 18:15:46.68", "2023-11-16 18:15:47.00", "2023-11-16 18:15:48.50"]


@pytest.mark.parametrize("rows,line,problem", [
    ([(GOOD[0], 5, 1), (GOOD[1], -3, 1), (GOOD[2], 5, 1)], 3, "negative token count"),
    ([(GOOD[0], 5, 1), (GOOD[1], 5, 1), (GOOD[2], 0, 1)], 4, "zero token count"),
    ([(GOOD[0], 5, 1), (GOOD[1], 5, "abc"), (GOOD[2], 5, 1)], 3, "non-numeric token count"),
    ([(GOOD[0], 5, 1), (GOOD[1], 5, 2.5), (GOOD[2], 5, 1)], 3, "non-integer token count"),
    ([(GOOD[0], 5, 1), (GOOD[1], "", 1), (GOOD[2], 5, 1)], 3, "missing token count"),
    ([(GOOD[0], 5, 1), ("yesterday", 5, 1), (GOOD[2], 5, 1)], 3, "unparsable timestamp"),
    ([(GOOD[0], 5, 1), (GOOD[2], 5, 1), (GOOD[1], 5, 1)], 4, "not sorted"),
])
def test_azure_malformed_names_file_line_problem(tmp_path, rows, line, problem):
    f = write(tmp_path / "bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
              + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    with pytest.raises(TraceFormatError) as err:
        load_azure(f)
    assert str(f) in str(err.value) and f"line {line}:" in str(err.value)
    assert problem in str(err.value) and err.value.line == line
    assert isinstance(err.value, ValueError)


def test_azure_missing_column_and_blank_lines(tmp_path):
    f = write(tmp_path / "nocol.csv", f"TIMESTAMP,ContextTokens\n{GOOD[0]},5\n")
    with pytest.raises(TraceFormatError, match=r"nocol.csv, line 1: missing column.*Generated"):
        load_azure(f)
    # a blank line must not shift the reported line numbers
    f = write(tmp_path / "blank.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
              f"{GOOD[0]},5,1\n\n{GOOD[1]},5,1\n{GOOD[2]},-1,1\n")
    with pytest.raises(TraceFormatError, match="line 5: .*negative"):
        load_azure(f)


def test_azure_sort_option(tmp_path):
    f = write(tmp_path / "unsorted.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
              f"{GOOD[1]},2,1\n{GOOD[0]},1,1\n{GOOD[2]},3,1\n")
    tr = load_azure(f, sort=True)
    assert list(tr.num_prompt_tokens) == [1, 2, 3] and tr.arrival_s[0] == 0.0
    assert tr.meta["num_reordered"] == 2


def big_azure(path, n, bad_line=None):
    stamps = np.datetime64("2024-05-10T00:00:00") + np.arange(n) * np.timedelta64(500, "ms")
    lines = [f"{str(s).replace('T', ' ')}+00:00,{i + 1},7" for i, s in enumerate(stamps)]
    if bad_line is not None:
        lines[bad_line - 2] = lines[bad_line - 2].replace(",7", ",-7")
    return write(path, "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(lines) + "\n")


def small_chunks(monkeypatch):
    monkeypatch.setattr(azure, "_CHUNK_ROWS", 100)
    monkeypatch.setattr(azure, "_BLOCK_BYTES", 4096)  # ~90 rows per pyarrow block


def test_azure_chunked_window_stops_early(tmp_path, monkeypatch):
    small_chunks(monkeypatch)
    f = big_azure(tmp_path / "week.csv", 2000, bad_line=1900)
    with pytest.raises(TraceFormatError, match="line 1900"):
        load_azure(f)
    # window [10 s, 60 s) ends near row 120: the bad row at line 1900 is never read
    tr = load_azure(f, start_s=10.0, end_s=60.0)
    assert len(tr) == 100 and tr.arrival_s[0] == 0.0 and tr.num_prompt_tokens[0] == 21
    assert tr.meta["num_rows_read"] < 1900
    assert len(load_azure(f, start_s=10.0, max_rows=5)) == 5


def test_azure_unsorted_across_chunk_boundary(tmp_path, monkeypatch):
    small_chunks(monkeypatch)
    f = big_azure(tmp_path / "week.csv", 300)
    text = f.read_text().splitlines()
    text[101], text[102] = text[102], text[101]  # lines 102/103 straddle the chunk edge
    write(f, "\n".join(text) + "\n")
    with pytest.raises(TraceFormatError, match="line 103: timestamps not sorted"):
        load_azure(f)


BURST = ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
         "5,ChatGPT,472,18,490,Conversation log\n"
         "45,ChatGPT,1087,0,1087,Conversation log\n"
         "118,GPT-4,417,276,693,Conversation log\n"
         "131,ChatGPT,1360,190,1550,API log\n")


def test_burstgpt_sample(tmp_path):
    f = write(tmp_path / "BurstGPT_1.csv", BURST)
    tr = load_burstgpt(f)
    assert list(tr.arrival_s) == [0.0, 113.0, 126.0] and tr.meta["num_failed_dropped"] == 1
    assert set(tr.dataset) == {"burstgpt"} and list(tr.num_output_tokens) == [18, 276, 190]
    chat = load_burstgpt(f, model="ChatGPT")
    assert list(chat.num_prompt_tokens) == [472, 1360] and chat.meta["num_failed_dropped"] == 1
    with pytest.raises(ValueError, match="models present"):
        load_burstgpt(f, model="Llama")
    assert sniff_format(f) == "burstgpt" and len(load_named(f"file:{f}")) == 3


@pytest.mark.parametrize("row,problem", [("x,ChatGPT,5,5,10,API log", "non-numeric timestamp"),
                                         ("200,ChatGPT,-5,5,0,API log", "negative"),
                                         ("200,ChatGPT,0,5,5,API log", "zero token count")])
def test_burstgpt_malformed(tmp_path, row, problem):
    f = write(tmp_path / "b.csv", BURST + row + "\n")
    with pytest.raises(TraceFormatError, match=f"b.csv, line 6: .*{problem}"):
        load_burstgpt(f)


def test_mooncake_sample_and_errors(tmp_path):
    ok = ('{"timestamp": 0, "input_length": 10, "output_length": 3, "hash_ids": [1]}\n'
          '{"timestamp": 1500, "input_length": 20, "output_length": 4, "hash_ids": [1, 2]}\n')
    f = write(tmp_path / "conversation_trace.jsonl", ok)
    tr = load_mooncake(f)
    assert list(tr.arrival_s) == [0.0, 1.5] and tr.dataset[0] == "mooncake_conv"
    cases = [('{"timestamp": 2000, "input_length": 5}', "missing field"),
             ('{"timestamp": 2000, "input_length": 5, "output_length": 0}', "zero token"),
             ('{"timestamp": "soon", "input_length": 5, "output_length": 1}', "non-numeric"),
             ('{"timestamp": 1000, "input_length": 5, "output_length": 1}', "not sorted"),
             ('{"timestamp": 2000, "input_len', "invalid JSON")]
    for text, problem in cases:
        bad = write(tmp_path / "bad.jsonl", ok + "\n" + text + "\n")  # blank line 3
        with pytest.raises(TraceFormatError, match=f"bad.jsonl, line 4: .*{problem}"):
            load_file(bad)


def test_catalog_names(tmp_path, monkeypatch):
    with pytest.raises(KeyError) as err:
        load_named("azure_chat")
    assert "azure_conv" in str(err.value) and "embedded" in str(err.value)
    assert "file:<path>" in known_names()
    monkeypatch.setenv("SPECBED_SHARED", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="SPECBED_SHARED"):
        load_named("azure_conv_2024")
    f = big_azure(tmp_path / "x.csv", 3)
    assert len(load_named(f"file:{f}")) == 3
    with pytest.raises(TraceFormatError, match="unknown trace format"):
        load_file(write(tmp_path / "other.csv", "a,b\n1,2\n"))


def checked_only(monkeypatch):
    def no_fast(*args, **kw):
        raise azure._Fallback
        yield  # pragma: no cover  (makes this a generator like the real one)
    monkeypatch.setattr(azure, "_fast_batches", no_fast)


@pytest.mark.parametrize("kw", [{}, {"start_s": 100.0, "end_s": 400.0}, {"max_rows": 77},
                                {"sort": True}])
def test_fast_and_checked_readers_agree(tmp_path, monkeypatch, kw):
    small_chunks(monkeypatch)
    f = big_azure(tmp_path / "week.csv", 1500)
    fast = load_azure(f, **kw)
    checked_only(monkeypatch)
    slow = load_azure(f, **kw)
    assert fast.meta["reader"] == "pyarrow" and slow.meta["reader"] == "pandas"
    np.testing.assert_array_equal(fast.arrival_s, slow.arrival_s)
    np.testing.assert_array_equal(fast.num_prompt_tokens, slow.num_prompt_tokens)


def test_readers_agree_on_real_conv(monkeypatch):
    path = shared_file("azure_conv")
    fast = load_azure(path)
    checked_only(monkeypatch)
    slow = load_azure(path)
    np.testing.assert_array_equal(fast.arrival_s, slow.arrival_s)
    np.testing.assert_array_equal(fast.num_output_tokens, slow.num_output_tokens)
