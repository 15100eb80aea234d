"""Obstruction loss: what the site's walls and obstacles take from a radio path, in dB.

The simulator draws its radio with it and the engine expects it, so both see the same
building. A wall costs its loss at each crossing; an obstacle (shelf, rack) costs its loss once
if the straight path crosses its outline below its top, the path's height at the crossing
being interpolated between the two ends. Hub-side module (numpy): the gateway never imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from beacon_hub.site import Level

__all__ = ["LevelObstructions"]

F64 = NDArray[np.float64]

LINK_CHUNK = 2_000_000
"""Links x edges evaluated per block: bounds the temporaries to some tens of MB."""


@dataclass(frozen=True, slots=True)
class LevelObstructions:
    walls_a: F64  # (W, 2)
    walls_b: F64
    walls_loss_db: F64  # (W,)
    edges_a: F64  # (E, 2) obstacle edges, grouped by obstacle
    edges_b: F64
    edges_top_m: F64  # (E,) top of the edge's obstacle, inf for full height
    obstacle_starts: NDArray[np.int64]  # (O,) first edge of each obstacle
    obstacle_loss_db: F64  # (O,)

    @classmethod
    def of(cls, level: Level) -> LevelObstructions:
        walls = level.walls
        ea: list[tuple[float, float]] = []
        eb: list[tuple[float, float]] = []
        top: list[float] = []
        starts: list[int] = []
        losses: list[float] = []
        for obstacle in level.obstacles:
            poly = obstacle.polygon
            starts.append(len(ea))
            losses.append(obstacle.loss_db)
            height = math.inf if obstacle.height_m is None else obstacle.height_m
            for i, a in enumerate(poly):
                ea.append(a)
                eb.append(poly[(i + 1) % len(poly)])
                top.append(height)
        return cls(
            walls_a=np.array([w.start for w in walls], dtype=np.float64).reshape(-1, 2),
            walls_b=np.array([w.end for w in walls], dtype=np.float64).reshape(-1, 2),
            walls_loss_db=np.array([w.loss_db for w in walls], dtype=np.float64),
            edges_a=np.array(ea, dtype=np.float64).reshape(-1, 2),
            edges_b=np.array(eb, dtype=np.float64).reshape(-1, 2),
            edges_top_m=np.array(top, dtype=np.float64),
            obstacle_starts=np.array(starts, dtype=np.int64),
            obstacle_loss_db=np.array(losses, dtype=np.float64),
        )

    @property
    def empty(self) -> bool:
        return bool(self.walls_a.shape[0] == 0 and self.edges_a.shape[0] == 0)

    def loss_db(self, points: F64, gateways: F64) -> F64:
        """(n, g) loss between points (n, 3) and gateways (g, 3), both on this level."""
        n, g = points.shape[0], gateways.shape[0]
        out = np.zeros((n, g))
        if self.empty or n == 0 or g == 0:
            return out
        edges = max(1, self.walls_a.shape[0] + self.edges_a.shape[0])
        step = max(1, LINK_CHUNK // (g * edges))
        for start in range(0, n, step):
            out[start : start + step] = self._block(points[start : start + step], gateways)
        return out

    def _block(self, pts: F64, gw: F64) -> F64:
        p = pts[:, None, None, :2]  # (n, 1, 1, 2)
        r = gw[None, :, None, :2] - p  # (n, g, 1, 2) link vector
        loss = np.zeros((pts.shape[0], gw.shape[0]))
        if self.walls_a.shape[0]:
            t = _crossings(p, r, self.walls_a, self.walls_b)
            loss += (~np.isnan(t)).astype(np.float64) @ self.walls_loss_db
        if self.edges_a.shape[0]:
            t = _crossings(p, r, self.edges_a, self.edges_b)
            z = pts[:, None, None, 2] + t * (gw[None, :, None, 2] - pts[:, None, None, 2])
            hit = z < self.edges_top_m  # NaN (no crossing) compares False
            per_obstacle = np.logical_or.reduceat(hit, self.obstacle_starts, axis=2)
            loss += per_obstacle.astype(np.float64) @ self.obstacle_loss_db
        return loss


def _crossings(p: F64, r: F64, a: F64, b: F64) -> F64:
    """Where links p + t r (0 < t < 1) cross segments a + u (b - a) (0 <= u <= 1): t broadcast
    to (n, g, E), NaN where there is no crossing; parallel segments never cross."""
    s = (b - a)[None, None, :, :]
    q = a[None, None, :, :] - p
    denom = r[..., 0] * s[..., 1] - r[..., 1] * s[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (q[..., 0] * s[..., 1] - q[..., 1] * s[..., 0]) / denom
        u = (q[..., 0] * r[..., 1] - q[..., 1] * r[..., 0]) / denom
    ok = (denom != 0) & (t > 0) & (t < 1) & (u >= 0) & (u <= 1)
    return np.asarray(np.where(ok, t, np.nan), dtype=np.float64)
