"""floorplan: clearance from the floor's edges, the test that lets a fix skip the floor mean."""

from __future__ import annotations

import numpy as np
import pytest

from beacon_hub.floorplan import FLOOR, STORAGE, WALKWAY, FloorPlan
from beacon_hub.site import Site, validate_site_data


def room_with_shelf() -> Site:
    """A 10 x 10 m room with a 2 x 2 m shelf in its north-east quarter (x 6..8, y 6..8)."""
    return validate_site_data(
        {
            "id": "room",
            "kind": "store",
            "levels": [
                {
                    "outline": [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]],
                    "obstacles": [
                        {
                            "id": "shelf",
                            "kind": "shelf",
                            "loss_db": 3.0,
                            "polygon": [[6.0, 6.0], [8.0, 6.0], [8.0, 8.0], [6.0, 8.0]],
                        }
                    ],
                }
            ],
            "gateways": [{"id": "g1", "x": 1.0, "y": 1.0, "z": 2.0}],
        },
        "room",
    )


def test_clearance_is_the_distance_to_the_nearest_edge() -> None:
    plan = FloorPlan(room_with_shelf())
    xy = np.array([[3.0, 3.0], [0.55, 5.0], [7.0, 7.0], [5.0, 7.0], [-2.0, 5.0]])
    floor = plan.clearance_m(0, xy, FLOOR)
    walkable = plan.clearance_m(0, xy, WALKWAY)
    # cell centres 0.1 m apart: distances are to the nearest cell off the floor, +-1 cell
    assert floor[0] == pytest.approx(3.0, abs=0.15)
    assert floor[1] == pytest.approx(0.55, abs=0.15)
    assert floor[2] == pytest.approx(3.0, abs=0.15)  # a shelf is floor for a pallet
    assert walkable[2] == 0.0  # but not walkable
    assert walkable[3] == pytest.approx(1.0, abs=0.15)
    assert floor[4] == walkable[4] == 0.0  # off the plan


def test_disc_inside_the_clearance_is_on_the_floor() -> None:
    """The promise the engine relies on: every point of a disc of radius clearance - 1.5 cells
    around a point lies on the walkable floor."""
    plan = FloorPlan(room_with_shelf())
    rng = np.random.default_rng(5)
    centres = rng.uniform(-0.5, 10.5, (400, 2))
    clear = plan.clearance_m(0, centres, WALKWAY)
    radius = np.maximum(clear - 1.5 * 0.1, 0.0)
    angle = rng.uniform(0.0, 2.0 * np.pi, (400, 64))
    r = radius[:, None] * np.sqrt(rng.uniform(0.0, 1.0, (400, 64)))
    pts = centres[:, None, :] + np.stack([r * np.cos(angle), r * np.sin(angle)], axis=-1)
    inside = plan.allowed(0, pts.reshape(-1, 2), WALKWAY).reshape(400, 64)
    assert inside[radius > 0].all()


def test_storage_is_the_floor_off_traffic_zones() -> None:
    """An aisle (x 4..8, y 0..6) beside the shelf: storage keeps the shelf and the open floor,
    not the aisle; a point in the aisle is stored at the aisle's nearest edge. A level drawn
    as one aisle has its whole floor for storage (an area is never empty)."""

    def with_zones(*zones: list[list[float]]) -> Site:
        doc = room_with_shelf().model_dump()
        doc["zones"] = [{"id": f"a{i}", "kind": "aisle", "polygon": z} for i, z in enumerate(zones)]
        return validate_site_data(doc, "room")

    plan = FloorPlan(with_zones([[4, 0], [8, 0], [8, 6], [4, 6]]))
    xy = np.array([[5.0, 3.0], [7.0, 7.0], [2.0, 3.0], [7.5, 3.0]])
    np.testing.assert_array_equal(plan.allowed(0, xy, STORAGE), [False, True, True, False])
    np.testing.assert_array_equal(plan.allowed(0, xy, WALKWAY), [True, False, True, True])
    stored = plan.project(0, xy, np.full(4, STORAGE, dtype=np.int8))
    np.testing.assert_allclose(stored[0], [3.95, 3.05], atol=1e-9)
    np.testing.assert_allclose(stored[3], [8.05, 3.05], atol=1e-9)
    np.testing.assert_array_equal(stored[1:3], xy[1:3])
    walked = plan.project(0, xy, np.full(4, WALKWAY, dtype=np.int8))
    assert plan.allowed(0, walked, WALKWAY).all()  # the point in the shelf moved out of it
    assert FloorPlan(plan.site, traffic_zone_kinds=()).allowed(0, xy, STORAGE).all()
    whole = FloorPlan(with_zones([[0, 0], [10, 0], [10, 10], [0, 10]]))
    assert whole.allowed(0, xy, STORAGE).all()
