"""Calibration: fit the radio model per gateway, and the radio map, from walks with known
positions.

`beacon-hub calibrate` reads one or more pairs of a readings CSV and a truth CSV (positions of
the walking tag over time), interpolates the tag's position at every reading, fits each
gateway's reference RSSI and path-loss exponent (pathloss.fit_path_loss), and learns the radio
map from the residuals (radiomap.RadioMap). The result is a YAML file the engine loads with
`--calibration`.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import yaml
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from beacon_hub.config_loader import (
    Loc,
    Located,
    format_loc,
    problems_to_error,
    read_config_text,
    validate_located,
    yaml_errors,
)
from beacon_hub.csvfiles import OutputFile, Reading, TruthPoint, listed
from beacon_hub.errors import BeaconHubError, ConfigError
from beacon_hub.obstruction import LevelObstructions
from beacon_hub.pathloss import fit_path_loss, mean_rssi_dbm
from beacon_hub.radiomap import MAP_BANDWIDTH_M, RadioMap, RadioMapFile, map_file_problems
from beacon_hub.site import Site

# libyaml's safe loader and dumper when PyYAML has them: a warehouse map (35 gateways x 20,000
# cells, 7.8 MB) loads in 5.7 s instead of 27.6 s and is written in 5.3 s instead of 10.9 s.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

if TYPE_CHECKING:
    from beacon_hub.engine import Engine

log = logging.getLogger(__name__)


def typical_height_m(site: Site) -> float:
    """The mounting height floor-plan losses are computed for: the median of the beacon kinds'
    heights, or 1 m (a cart handle, a pallet's side) when the site names none."""
    heights = [k.height_m for k in site.beacon_kinds if k.kind != "reference"]
    return float(np.median(heights)) if heights else 1.0


__all__ = [
    "PATH_LOSS_MODES",
    "Calibration",
    "GatewayFit",
    "Walk",
    "fit_calibration",
    "load_calibration",
    "path_loss_mode",
    "save_calibration",
    "typical_height_m",
]

PATH_LOSS_MODES = ("tracking", "no_tracking")
"""The engine's modes a path-loss accuracy scale is measured for, keyed by these names."""
Walk = tuple[Iterable[Reading], Iterable[TruthPoint]]
"""A calibration walk: its readings and where the tag really was."""
MIN_SAMPLES_PER_GATEWAY = 30
"""Fewer samples than this do not pin down two parameters against 6 dB of shadowing."""
Warn = Callable[[str], None]
"""Where a problem that does not stop the work is told: the CLI prints it, the hub logs it."""


def path_loss_mode(tracking: bool) -> str:
    """The PATH_LOSS_MODES key of an engine with tracking on or off."""
    return PATH_LOSS_MODES[0] if tracking else PATH_LOSS_MODES[1]


@dataclass(frozen=True)
class GatewayFit:
    ref_rssi_1m_dbm: float
    path_loss_exponent: float
    shadowing_db: float
    """Residual spread after the path-loss fit."""
    residual_after_map_db: float
    """Residual spread after the map (in-sample: a lower bound)."""
    samples: int


@dataclass
class Calibration:
    site: str
    gateways: dict[str, GatewayFit]
    radio_map: RadioMap | None
    plan_losses: bool = False
    """Whether the fit took the site file's walls and obstacles out first; the engine then
    expects them too, whatever its own setting."""
    path_loss_accuracy_scale: dict[str, float] = field(default_factory=dict)
    """By PATH_LOSS_MODES ("tracking", "no_tracking"): what multiplies accuracy_m when the
    engine places by these fits' path loss alone (no map in use), measured on the calibration
    walk replayed so (replay.path_loss_accuracy_scale). The path-loss spread counts the static
    field at each gateway as independent noise and overstates the error (flat-calib2021: 91 %
    and 85 % of true positions within accuracy_m)."""

    def apply(self, engine: Engine) -> None:
        """Put the fitted parameters and map into an engine built for the same site."""
        for gw, fit in self.gateways.items():
            if gw not in engine.gateway_ids:
                continue
            i = engine.gateway_ids.index(gw)
            engine.gw_ref[i] = fit.ref_rssi_1m_dbm
            engine.gw_exp[i] = fit.path_loss_exponent
            engine.gw_shadowing_db[i] = fit.shadowing_db
        if self.radio_map is not None:
            engine.radio_map = self.radio_map.for_gateways(engine.gateway_ids)


def _interpolate_truth(
    truth: Iterable[TruthPoint],
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    by_beacon: dict[str, list[TruthPoint]] = defaultdict(list)
    for p in truth:
        by_beacon[p.beacon].append(p)
    out = {}
    for beacon, points in by_beacon.items():
        points.sort(key=lambda p: p.t)
        t = np.array([p.t for p in points])
        x = np.array([p.x for p in points])
        y = np.array([p.y for p in points])
        z = np.array([np.nan if p.z is None else p.z for p in points])
        out[beacon] = (t, x, y, z)
    return out


@dataclass
class _Heard:
    """A walk's readings as _match_readings collects them, and what it left out."""

    by_beacon: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    """Per beacon of the truth, its rows in the columns below."""
    gateway: list[int] = field(default_factory=list)
    t: list[float] = field(default_factory=list)
    rssi: list[float] = field(default_factory=list)
    count: int = 0
    """Readings in the file."""
    unknown: Counter[str] = field(default_factory=Counter)
    """Readings per gateway that the site does not have."""
    untracked: Counter[str] = field(default_factory=Counter)
    """Readings (from the site's gateways) per beacon that the truth does not follow."""


def _collect(
    site: Site, readings: Iterable[Reading], paths: dict[str, Any], progress: bool
) -> _Heard:
    gateway_ids = {g.id: i for i, g in enumerate(site.gateways)}
    heard = _Heard()
    for r in readings:
        heard.count += 1
        g = gateway_ids.get(r.gateway)
        if g is None:
            heard.unknown[r.gateway] += 1
        elif r.beacon not in paths:
            heard.untracked[r.beacon] += 1
        else:
            heard.by_beacon[r.beacon].append(len(heard.gateway))
            heard.gateway.append(g)
            heard.t.append(r.t)
            heard.rssi.append(r.rssi)
        if progress and heard.count % 200_000 == 0:
            print(f"calibrate: {heard.count} readings read", file=sys.stderr)
    return heard


def _check_walk(site: Site, heard: _Heard, paths: dict[str, Any], names: tuple[str, str]) -> None:
    """The cause, when no reading of a walk can meet its truth: no readings, none from the
    site's gateways, none of the truth's beacons."""
    readings_name, truth_name = names
    if heard.count == 0:
        raise BeaconHubError(f"{readings_name}: no readings; the file has a header and no rows")
    if heard.unknown.total() == heard.count:
        raise BeaconHubError(
            f"{readings_name}: none of its gateways is in site {site.id}: the readings come "
            f"from {listed(sorted(heard.unknown))}; the site has "
            f"{listed(g.id for g in site.gateways)}"
        )
    if not heard.t:
        raise BeaconHubError(
            f"{readings_name}: no reading of a beacon in {truth_name}: the readings hear "
            f"{listed(sorted(heard.untracked))}; the truth follows {listed(sorted(paths))}"
        )


def _match_readings(
    site: Site,
    readings: Iterable[Reading],
    truth: Iterable[TruthPoint],
    max_gap_s: float,
    *,
    progress: bool,
    names: tuple[str, str],
    warn: Warn,
) -> dict[str, NDArray[np.float64]]:
    """Per gateway, rows (x, y, z, rssi) in reading order: each reading at the tag's
    interpolated position.

    Only readings between two truth points at most `max_gap_s` apart are used: never across a
    gap in the walk. The readings are collected first and matched per beacon at once (a
    300 s warehouse recording holds half a million readings). A walk of which no reading
    matches is refused with its cause, naming its files (`names`: readings, truth); readings
    from gateways that are not the site's are left out with a warning.
    """
    readings_name, truth_name = names
    paths = _interpolate_truth(truth)
    if not paths:
        raise BeaconHubError(f"{truth_name}: no positions; the truth file has a header and no rows")
    heard = _collect(site, readings, paths, progress)
    _check_walk(site, heard, paths, names)
    if heard.unknown:
        warn(
            f"{readings_name}: {heard.unknown.total()} readings from gateways that are not in "
            f"site {site.id} are left out: "
            + listed(f"{g} ({n} readings)" for g, n in sorted(heard.unknown.items()))
        )
    rt = np.asarray(heard.t, dtype=np.float64)
    xyz = np.full((rt.shape[0], 3), np.nan)
    for beacon, rows_list in heard.by_beacon.items():
        rows = np.asarray(rows_list, dtype=np.intp)
        t, x, y, z = paths[beacon]
        at = rt[rows]
        i = np.searchsorted(t, at)
        inside = (i > 0) & (i < t.shape[0])
        exact = (i < t.shape[0]) & (t[np.minimum(i, t.shape[0] - 1)] == at)
        bridged = inside & (t[np.minimum(i, t.shape[0] - 1)] - t[np.maximum(i - 1, 0)] <= max_gap_s)
        ok = rows[exact | bridged]
        at = rt[ok]
        xyz[ok, 0] = np.interp(at, t, x)
        xyz[ok, 1] = np.interp(at, t, y)
        if np.isfinite(z).all():
            xyz[ok, 2] = np.interp(at, t, z)
        else:
            kind = site.kind_of(beacon)
            xyz[ok, 2] = kind.height_m if kind else 1.0
    gw = np.asarray(heard.gateway, dtype=np.intp)
    matched = np.isfinite(xyz[:, 0])
    table = np.c_[xyz, np.asarray(heard.rssi, dtype=np.float64)]
    if progress:
        print(f"calibrate: {int(matched.sum())} readings matched to truth", file=sys.stderr)
    if not matched.any():
        truth_t = np.concatenate([p[0] for p in paths.values()])
        raise BeaconHubError(
            f"{readings_name}: none of its {rt.shape[0]} readings of the beacons in "
            f"{truth_name} falls within the truth's time span, between two positions at most "
            f"{max_gap_s:g} s apart: the readings run from {rt.min():.3f} to {rt.max():.3f}, "
            f"the truth from {truth_t.min():.3f} to {truth_t.max():.3f} (Unix seconds)"
        )
    by_gateway = {g.id: matched & (gw == i) for i, g in enumerate(site.gateways)}
    return {g: table[rows] for g, rows in by_gateway.items() if rows.any()}


def _match_walks(
    site: Site,
    walks: Sequence[Walk],
    max_gap_s: float,
    *,
    progress: bool,
    names: Sequence[tuple[str, str]],
    warn: Warn,
) -> dict[str, NDArray[np.float64]]:
    """_match_readings of each walk, per gateway in walk order."""
    parts: dict[str, list[NDArray[np.float64]]] = defaultdict(list)
    for (readings, truth), walk_names in zip(walks, names, strict=True):
        matched = _match_readings(
            site, readings, truth, max_gap_s, progress=progress, names=walk_names, warn=warn
        )
        for gw, arr in matched.items():
            parts[gw].append(arr)
    return {gw: np.concatenate(arrs) for gw, arrs in parts.items()}


def fit_calibration(
    site: Site,
    walks: Sequence[Walk],
    *,
    with_map: bool = True,
    plan_losses: bool = False,
    map_bandwidth_m: float = MAP_BANDWIDTH_M,
    max_gap_s: float = 2.0,
    progress: bool = False,
    names: Sequence[tuple[str, str]] | None = None,
    warn: Warn = log.warning,
) -> Calibration:
    """Fit every gateway heard during the walks, and the map from their residuals (kernel
    `map_bandwidth_m`: radiomap.MAP_BANDWIDTH_M, SURVEY_BANDWIDTH_M). Each walk
    (its readings and its truth) is matched on its own, so walks of different days may share
    beacons and clock times; their readings are then fitted together.

    `names` (each walk's readings and truth files) go into the messages: BeaconHubError for a
    walk of which no reading meets its truth, with the cause; `warn` for readings from
    gateways the site does not have, and for the site's gateways left without a fit."""
    if not walks:
        raise BeaconHubError("calibration: no walk given")
    if names is None:
        names = [(f"walk {k} readings", f"walk {k} truth") for k in range(1, len(walks) + 1)]
    rows = _match_walks(site, walks, max_gap_s, progress=progress, names=names, warn=warn)
    gw_ids = tuple(g.id for g in site.gateways)
    gateways = {g.id: g for g in site.gateways}
    fits: dict[str, GatewayFit] = {}
    residual_parts: list[NDArray[np.float64]] = []
    obstructions = {level.level: LevelObstructions.of(level) for level in site.levels}
    for gw_id, arr in sorted(rows.items()):
        if arr.shape[0] < MIN_SAMPLES_PER_GATEWAY:
            continue
        g = gateways[gw_id]
        d = np.sqrt((arr[:, 0] - g.x) ** 2 + (arr[:, 1] - g.y) ** 2 + (arr[:, 2] - g.z) ** 2)
        # The plan's walls and obstacles are the engine's to expect: fit what they leave.
        loss: NDArray[np.float64] | float = 0.0
        if plan_losses:
            gw_xyz = np.array([[g.x, g.y, g.z]])
            loss = obstructions[g.level].loss_db(arr[:, 0:3], gw_xyz)[:, 0]
        pl = fit_path_loss(d, arr[:, 3] + loss)
        residual = arr[:, 3] - mean_rssi_dbm(d, pl.ref_rssi_1m_dbm, pl.exponent)
        residual_parts.append(
            np.c_[np.full(arr.shape[0], gw_ids.index(gw_id)), arr[:, 0:2], residual]
        )
        fits[gw_id] = GatewayFit(
            pl.ref_rssi_1m_dbm, pl.exponent, pl.residual_sd_db, pl.residual_sd_db, pl.samples
        )
    matched = sorted(
        ((g.id, rows[g.id].shape[0] if g.id in rows else 0) for g in site.gateways),
        key=lambda item: -item[1],
    )
    counts = listed(f"{gw} ({n})" for gw, n in matched if gw not in fits)
    if not fits:
        raise BeaconHubError(
            f"{listed(r for r, _ in names)}: no gateway has {MIN_SAMPLES_PER_GATEWAY} readings "
            f"matched to truth ({counts}); walk longer, or nearer the gateways"
        )
    if len(fits) < len(site.gateways):
        warn(
            f"no fit for {len(site.gateways) - len(fits)} of site {site.id}'s "
            f"{len(site.gateways)} gateways, with fewer than {MIN_SAMPLES_PER_GATEWAY} readings "
            f"matched to truth ({counts}): the engine keeps the site's radio settings for them"
        )
    radio_map = None
    if with_map:
        radio_map = RadioMap.for_site(site, gw_ids, bandwidth_m=map_bandwidth_m)
        if plan_losses:
            radio_map.with_plan_losses(site, typical_height_m(site))
        res = np.concatenate(residual_parts)
        gw_col = res[:, 0].astype(np.intp)
        radio_map.observe(gw_col, res[:, 1:3], res[:, 3])
        left = res[:, 3] - radio_map.correction(gw_col, res[:, 1:3])[0]
        for gw_id, f in list(fits.items()):
            on = gw_col == gw_ids.index(gw_id)
            fits[gw_id] = GatewayFit(
                f.ref_rssi_1m_dbm,
                f.path_loss_exponent,
                f.shadowing_db,
                float(np.std(left[on])),
                f.samples,
            )
    return Calibration(site=site.id, gateways=fits, radio_map=radio_map, plan_losses=plan_losses)


def save_calibration(cal: Calibration, path: Path) -> None:
    data: dict[str, Any] = {
        "site": cal.site,
        "plan_losses": cal.plan_losses,
        "gateways": {
            gw: {
                "ref_rssi_1m_dbm": round(f.ref_rssi_1m_dbm, 2),
                "path_loss_exponent": round(f.path_loss_exponent, 3),
                "shadowing_db": round(f.shadowing_db, 2),
                "residual_after_map_db": round(f.residual_after_map_db, 2),
                "samples": f.samples,
            }
            for gw, f in cal.gateways.items()
        },
    }
    if cal.path_loss_accuracy_scale:
        data["path_loss_accuracy_scale"] = {
            k: round(v, 3) for k, v in cal.path_loss_accuracy_scale.items()
        }
    if cal.radio_map is not None:
        data["radio_map"] = cal.radio_map.to_dict()
    text = "# beacon-hub calibration: written by `beacon-hub calibrate`\n" + yaml.dump(
        data, Dumper=_DUMPER, sort_keys=False, default_flow_style=None, width=120
    )
    with OutputFile(path) as out:  # whole or not at all: an interrupted save keeps the old file
        out.write(text)


MAX_CALIBRATION_BYTES = 1024 * 1024 * 1024
"""Largest calibration file read. `calibrate` writes about 0.22 MB a gateway (two grids of
20,000 cells, about 5 characters a value: the example warehouse's 60 gateways are 13 MB), so
1 GiB holds the maps of 4,000 gateways."""

FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False)]


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayFitFile(_FileModel):
    """One gateway's fit as save_calibration writes it. The ranges are several times what a
    least-squares fit of readings (-127..+20 dBm) gives, and keep the engine's arithmetic
    finite: a value of 1e300 in any of the first three made its tick fail, 1,000 did not."""

    ref_rssi_1m_dbm: Annotated[FiniteFloat, Field(ge=-200, le=100)]
    path_loss_exponent: Annotated[FiniteFloat, Field(ge=-20, le=20)]
    """2 in free space, 1.5-3.1 on flat-calib2021; fits of the simulated warehouse's obstructed
    gateways give -0.4-0.1 (an unconstrained fit)."""
    shadowing_db: Annotated[FiniteFloat, Field(ge=0, le=100)]
    residual_after_map_db: Annotated[FiniteFloat, Field(ge=0, le=100)]
    samples: Annotated[StrictInt, Field(ge=0, le=1_000_000_000)]


class PathLossScalesFile(_FileModel):
    """What multiplies accuracy_m in each of PATH_LOSS_MODES."""

    tracking: Annotated[FiniteFloat, Field(gt=0)] | None = None
    no_tracking: Annotated[FiniteFloat, Field(gt=0)] | None = None


class CalibrationFile(_FileModel):
    """A calibration file as save_calibration writes it."""

    site: StrictStr
    plan_losses: StrictBool = False
    gateways: dict[StrictStr, GatewayFitFile]
    path_loss_accuracy_scale: PathLossScalesFile = PathLossScalesFile()
    radio_map: RadioMapFile | None = None


def _read_yaml(path: Path) -> Located:
    """The document with the line of every key, read by libyaml when PyYAML has it:
    config_loader.read_yaml's pure-Python parser takes 7.1 s for the example warehouse's
    13 MB calibration, this 0.3 s. Refuses duplicate keys as read_yaml does, and an alias of a
    list or mapping: `calibrate` writes none, and one could multiply the work of validating."""
    source = str(path)
    text = read_config_text(path, MAX_CALIBRATION_BYTES)
    with yaml_errors(source, text):
        loader = _LOADER(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return Located(data={}, origins={(): f"{source}:1"}, source=source)
            origins = _origins(node, source)
            data = loader.construct_document(node)
        except ConfigError:
            raise  # a ValueError too, but one of ours, already naming its place
        except (ArithmeticError, LookupError, TypeError, ValueError) as e:
            # PyYAML's constructors: an integer of more than 4,300 digits, `!!float abc` ...
            raise ConfigError(source, [f"{source}: not valid YAML: {e}"]) from e
        finally:
            loader.dispose()
    return Located(data=data, origins=origins, source=source)


def _origins(root: yaml.Node, source: str) -> dict[Loc, str]:
    """The line of every mapping key (a list item is placed by its list); ConfigError for a
    key given twice or a list or mapping reached twice (an alias)."""
    origins: dict[Loc, str] = {(): f"{source}:{root.start_mark.line + 1}"}
    problems: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if not isinstance(node, yaml.CollectionNode):
            continue
        if id(node) in seen:
            problems.append(
                f"{source}:{node.start_mark.line + 1}: {format_loc(loc)}: an alias of a list or "
                "mapping; a calibration file holds none"
            )
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                line = f"{source}:{key_node.start_mark.line + 1}"
                if key in keys:
                    problems.append(
                        f"{line}: {format_loc((*loc, key))}: key given twice; each key may "
                        "appear once"
                    )
                keys.add(key)
                origins[(*loc, key)] = line
                stack.append((value_node, (*loc, key)))
        else:
            # only lists and mappings: a grid written as a YAML list has 20,000 numbers
            stack.extend(
                (item, (*loc, i))
                for i, item in enumerate(node.value)
                if isinstance(item, yaml.CollectionNode)
            )
    if problems:
        raise ConfigError(source, problems)
    return origins


def _warn_unknown_gateways(
    path: Path, doc: Located, checked: CalibrationFile, site: Site, warn: Warn
) -> None:
    """Tell of the file's gateways (fits or map grids) that the site does not have: the engine
    leaves them unused, and the site's gateways they were meant for keep its radio settings."""
    site_ids = [g.id for g in site.gateways]
    named = dict.fromkeys(checked.gateways)
    if checked.radio_map is not None:
        named.update(dict.fromkeys(checked.radio_map.gateways))
    unknown = [gw for gw in named if gw not in site_ids]
    if not unknown:
        return
    origins = doc.origins
    places = [
        f"{gw} ({origins.get(('gateways', gw)) or origins.get(('radio_map', 'gateways', gw))})"
        for gw in unknown
    ]
    unfitted = [gw for gw in site_ids if gw not in checked.gateways]
    warn(
        f"{path}: {len(unknown)} calibrated gateways are not in site {site.id} and are left "
        f"unused: {listed(places)}"
        + (
            f"; {len(unfitted)} of the site's gateways have no fit here and keep its radio "
            f"settings: {listed(unfitted)}"
            if unfitted
            else ""
        )
    )


def load_calibration(path: Path, site: Site, *, warn: Warn = log.warning) -> Calibration:
    """Read and validate a calibration file for `site`; ConfigError lists every problem with
    file:line and the path inside the file. Fits of gateways the site does not have are a
    warning, not an error (a gateway may have been removed since): `warn` names them."""
    doc = _read_yaml(path)
    checked = validate_located(CalibrationFile, doc)
    _warn_unknown_gateways(path, doc, checked, site, warn)
    problems: list[tuple[Loc, str]] = []
    if checked.site != site.id:
        problems.append((("site",), f"calibrated for {checked.site!r}, not {site.id!r}"))
    if checked.radio_map is not None:
        problems.extend(
            (("radio_map", *loc), what) for loc, what in map_file_problems(checked.radio_map)
        )
    if problems:
        raise problems_to_error(doc, problems)
    fits = {
        gw: GatewayFit(
            v.ref_rssi_1m_dbm,
            v.path_loss_exponent,
            v.shadowing_db,
            v.residual_after_map_db,
            v.samples,
        )
        for gw, v in checked.gateways.items()
    }
    radio_map = None
    if checked.radio_map is not None:
        radio_map = RadioMap.from_file(checked.radio_map, tuple(g.id for g in site.gateways))
    scales = checked.path_loss_accuracy_scale.model_dump(exclude_none=True)
    return Calibration(
        site=site.id,
        gateways=fits,
        radio_map=radio_map,
        plan_losses=checked.plan_losses,
        path_loss_accuracy_scale=scales,
    )
