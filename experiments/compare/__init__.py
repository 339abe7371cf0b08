"""The policy comparison sweep (``python -m experiments.compare``): its grid (setup_grid), runs
(sweep), ratios to the best fixed k and the oracle (ratios), findings text (findings), and the
Spec-Bench and paper-reproduction variants (specbench, repro)."""
