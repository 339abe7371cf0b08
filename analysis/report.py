"""HTML report: figures (PNG embedded, PDF alongside) and tables for a set of runs.

    python -m analysis.report runs/                     # every run under a results root
    python -m analysis.report runs/sweeps/<ledger>.txt --out report/ --baseline none
"""
from __future__ import annotations

import argparse
import base64
import html
import time
from pathlib import Path

import pandas as pd

from analysis import figures
from analysis.runs import load_runs
from analysis.tables import (LOAD_COLUMN, format_frame_table, shape_classes,
                             summary_frame_for_display)


def _img(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f'<figcaption>{html.escape(caption)} (<a href="{png.stem}.pdf">PDF</a>, '
            f'<a href="{png.name}">PNG</a>)</figcaption></figure>')


def _html_table(shown: pd.DataFrame) -> str:
    return shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-", border=0,
                         classes="summary")


def make_figures(frame: pd.DataFrame, out_dir, *, baseline: str = "none",
                 shift_runs: dict | None = None, shift_bin_s: float = 5.0,
                 compare: pd.DataFrame | None = None) -> list[tuple]:
    """Write every figure the runs support; return [(png_path, caption), ...].

    ``frame``: the load sweep (live rows, if any, only feed the sim-vs-live figure);
    ``shift_runs``: label -> load-shift run folder; ``compare``: sim and live twins."""
    out = []
    backend = frame.get("backend.name", pd.Series("sim", index=frame.index))
    sweep = frame[backend != "live"] if (backend != "live").any() else frame
    if compare is None and (backend == "live").any():
        compare = frame
    by_load = sweep[LOAD_COLUMN].nunique() > 1 if LOAD_COLUMN in sweep else False
    if by_load:
        # chain policies (what vLLM runs) and tree policies (simulator only) apart
        shape = shape_classes(sweep)
        parts = ([("", "", sweep)] if shape.nunique() <= 1 else
                 [(f"_{c}", f" ({c} policies)", sweep[shape == c]) for c in ("chain", "tree")])
        for suffix, which, part in parts:
            out.append((figures.save_figure(figures.fig_latency_vs_load(part, which), out_dir,
                                            f"latency_vs_load{suffix}"),
                        f"Mean and p99 TPOT and TTFT against offered load, per policy{which}."))
            out.append((figures.save_figure(figures.fig_goodput_vs_load(part, which), out_dir,
                                            f"goodput_vs_load{suffix}"),
                        "Goodput (tokens/s of SLO-meeting requests) and throughput against "
                        f"load{which}."))
            out.append((figures.save_figure(figures.fig_slo_vs_load(part, which), out_dir,
                                            f"slo_vs_load{suffix}"),
                        "Share of requests meeting their TTFT and TPOT SLOs against "
                        f"load{which}."))
        if baseline in set(sweep["policy"]):
            out.append((figures.save_figure(figures.fig_speedup(sweep, baseline), out_dir,
                                            "speedup"),
                        f"Mean-TPOT speedup of each policy over '{baseline}' at each load."))
    if shift_runs:
        out.append((figures.save_figure(figures.fig_load_shift(shift_runs, shift_bin_s),
                                        out_dir, "load_shift"),
                    "Arrival rate, mean speculative length and acceptance rate over time "
                    "while the load rises and falls back."))
    if compare is not None and {"sim", "live"} <= set(compare["backend.name"]):
        out.append((figures.save_figure(figures.fig_sim_vs_live(compare), out_dir,
                                        "sim_vs_live"),
                    "Each live run beside its simulated twin (the same requests, engine "
                    "limits and drafter, the fitted profile of this machine, the live "
                    "acceptance replayed); error bars: range of the live runs; labels: the "
                    "twin's error against the live mean."))
    return out


def build_report(frame_or_paths, out_dir, *, title: str = "Speculative decoding sweep",
                 baseline: str = "none", shift_runs: dict | None = None,
                 compare: pd.DataFrame | None = None, notes: str = "") -> Path:
    """Write figures (PNG+PDF), runs.csv, summary.csv and report.html into ``out_dir``."""
    frame = (frame_or_paths if isinstance(frame_or_paths, pd.DataFrame)
             else load_runs(frame_or_paths))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = make_figures(frame, out, baseline=baseline, shift_runs=shift_runs, compare=compare)
    shown = summary_frame_for_display(frame)
    frame.to_csv(out / "runs.csv", index=False)
    shown.to_csv(out / "summary.csv", index=False)
    (out / "summary.txt").write_text(format_frame_table(frame) + "\n")
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>{len(frame)} runs; generated {time.strftime('%Y-%m-%d %H:%M:%S')}. "
            f"Tables: <a href='summary.csv'>summary.csv</a>, <a href='runs.csv'>runs.csv</a> "
            f"(every config column and metric).</p>"]
    if notes:
        body.append(f"<p>{html.escape(notes)}</p>")
    body += [_img(png, cap) for png, cap in figs]
    body.append("<h2>Summary</h2>")
    body.append(_html_table(shown))
    if compare is not None:
        body += ["<h2>Simulated vs live</h2>", _html_table(summary_frame_for_display(compare))]
        compare.to_csv(out / "sim_vs_live.csv", index=False)
    page = ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
            "figure{margin:1.5em 0}img{max-width:100%}figcaption{font-size:.9em;color:#555}"
            "table.summary{border-collapse:collapse;font-size:.85em}"
            "table.summary td,table.summary th{padding:2px 8px;text-align:right;"
            "border-bottom:1px solid #ddd}table.summary td:first-child{text-align:left}"
            "</style></head><body>" + "\n".join(body) + "</body></html>")
    report = out / "report.html"
    report.write_text(page)
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="run folders, results roots or sweep ledgers")
    ap.add_argument("--out", default="report", help="output folder (default: report)")
    ap.add_argument("--baseline", default="none", help="policy label for the speedup figure")
    ap.add_argument("--title", default="Speculative decoding sweep")
    args = ap.parse_args(argv)
    path = build_report(args.paths, args.out, title=args.title, baseline=args.baseline)
    print(path.resolve())


if __name__ == "__main__":
    main()
