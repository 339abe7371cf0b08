"""``python -m experiments.tune``: a trace, a model pair, hardware and SLOs in, a vLLM
speculative config out (cli.py: the command; search.py: the Optuna search; table.py: the
batch-size table; report.py: the outputs)."""
