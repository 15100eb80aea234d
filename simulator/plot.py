"""Draw a simulated run's ground truth on the floor plan (PNG), for the docs and for a look.

python -m simulator.plot --site config/store.yaml --truth t.csv --out tracks.png
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Polygon

from beacon_hub.csvfiles import read_truth
from beacon_hub.site import Site, load_site

__all__ = ["main", "plot_tracks"]

KIND_COLOURS = {"cart": "tab:blue", "pallet": "tab:orange", "asset": "tab:red"}


def plot_tracks(site: Site, truth: Path, out: Path, title: str = "") -> None:
    tracks: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for p in read_truth(truth):
        tracks[p.beacon].append((p.x, p.y))
    level = site.levels[0]
    xs = [p[0] for p in level.outline]
    ys = [p[1] for p in level.outline]
    width = max(xs) - min(xs)
    height = max(ys) - min(ys)
    fig, ax = plt.subplots(figsize=(10, 10 * height / width + 0.6))
    ax.add_patch(Polygon(level.outline, closed=True, fill=False, lw=1.5, color="black"))
    for zone in site.zones:
        if zone.kind == "bay":
            continue
        ax.add_patch(Polygon(zone.polygon, closed=True, fill=True, alpha=0.06, color="tab:green"))
    for obstacle in level.obstacles:
        ax.add_patch(Polygon(obstacle.polygon, closed=True, color="0.55", alpha=0.8, lw=0))
    for wall in level.walls:
        ax.plot(*zip(wall.start, wall.end, strict=True), color="black", lw=3)
    for gw in site.gateways:
        ax.plot(gw.x, gw.y, marker="^", color="black", ms=7)
    for beacon, pts in tracks.items():
        kind = site.kind_of(beacon)
        name = kind.kind if kind else "asset"
        if name == "reference":
            ax.plot(*pts[0], marker="s", color="tab:purple", ms=4)
            continue
        px, py = zip(*pts, strict=True)
        moved = len(set(pts)) > 1
        colour = KIND_COLOURS.get(name, "tab:red")
        if moved:
            ax.plot(px, py, lw=0.9, alpha=0.8, color=colour)
        else:
            ax.plot(px[0], py[0], marker=".", ms=3, alpha=0.5, color=colour)
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    ax.set_ylim(min(ys) - 1, max(ys) + 1)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title or f"{site.name or site.id}: simulated tracks")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, required=True)
    parser.add_argument("--truth", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    plot_tracks(load_site(args.site), args.truth, args.out, args.title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
