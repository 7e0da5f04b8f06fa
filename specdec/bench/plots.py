"""PNG plots for `specdec bench offload` (matplotlib, from the `bench` extra)."""
from __future__ import annotations

from pathlib import Path

from .strong_pair import display
from .worker import floor_seconds


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError("plots need matplotlib: pip install 'specdec[bench]'") from e
    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    return plt


def plot_ms_per_token(rows: list[dict], path: Path) -> None:
    """One panel per workload: ms/token per contender, a bar per temperature (log scale:
    the contenders differ by orders of magnitude)."""
    plt = _pyplot()
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.2), squeeze=False)
    for ax, wl in zip(axes[0], workloads):
        ok = [r for r in rows if r["workload"] == wl and r["ok"] and r.get("ms_per_token")]
        names = list(dict.fromkeys(r["contender"] for r in ok))
        temps = list(dict.fromkeys(r["temperature"] for r in ok if r["temperature"] is not None))
        width = 0.8 / max(len(temps), 1)
        for j, t in enumerate(temps):
            vals = [_ms(ok, n, None if n == "floor" else t) for n in names]
            xs = [i + (j - (len(temps) - 1) / 2) * width for i in range(len(names))]
            ax.bar(xs, vals, width, label=f"T={t:g}")
        ax.set_xticks(range(len(names)), [display(n) for n in names], rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("ms per token (log)")
        ax.set_title(wl)
        if temps:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ms(rows, name, t):
    for r in rows:
        if r["contender"] == name and r["temperature"] == t:
            return r["ms_per_token"]
    return 0.0


def plot_pass_time(report: dict, path: Path) -> None:
    """Streamed verification pass time vs tokens in the pass, with the raw read of the same
    bytes as a line: a flat curve near the line is what speculation lives on."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for e in report["workloads"]:
        floor = e["results"].get("floor", {})
        if not floor.get("ok"):
            continue
        f, name = floor["floor"], e["workload"]["name"]
        xs = [p["tokens"] for p in f["passes"]]
        line = ax.plot(xs, [p["seconds"] * 1e3 for p in f["passes"]], marker="o", label=f"{name}: pass")
        ax.axhline(floor_seconds(f) * 1e3, ls="--",
                   color=line[0].get_color(), label=f"{name}: floor (fastest read of a pass's bytes)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens verified in one pass")
    ax.set_ylabel("pass time, ms (log)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
