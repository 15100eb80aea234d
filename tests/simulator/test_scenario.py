"""`beacon-sim run`: files the project's readers accept, complete truth, determinism, and the
same readings through a real Mosquitto as in the CSV."""

from __future__ import annotations

import queue
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from beacon_hub.csvfiles import read_readings, read_truth
from beacon_hub.pathloss import mean_rssi_dbm
from beacon_hub.site import load_site
from beacon_hub.wire import decode_batch, decode_status, parse_topic
from simulator.cli import DEFAULT_START_S, main
from tests.servers import Mosquitto

CONFIG = Path(__file__).resolve().parents[2] / "config"
STORE = CONFIG / "store.yaml"
ROOM = CONFIG / "room.yaml"


@pytest.fixture(scope="module")
def store_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The issue's command: 120 s of the store, seed 1."""
    folder = tmp_path_factory.mktemp("store")
    r, t = folder / "r.csv", folder / "t.csv"
    argv = ["run", "--site", str(STORE), "--duration", "120", "--seed", "1", "--speed", "max"]
    assert main([*argv, "--out", str(r), "--truth", str(t)]) == 0
    return r, t


def test_store_run_writes_files_the_readers_accept(store_run: tuple[Path, Path]) -> None:
    r, t = store_run
    site = load_site(STORE)
    readings = list(read_readings(r))
    truth = list(read_truth(t))
    gateways = {g.id for g in site.gateways}
    assert len(readings) > 100_000
    assert {x.gateway for x in readings} <= gateways
    assert len({x.gateway for x in readings}) == len(gateways)
    assert all(-100 <= x.rssi <= 20 and x.rssi == round(x.rssi) for x in readings)
    assert all(DEFAULT_START_S <= x.t < DEFAULT_START_S + 120 for x in readings)
    # every beacon in the truth every 0.5 s, with level and (mostly) a zone
    beacons = {p.beacon for p in truth}
    per_time = Counter(p.t for p in truth)
    assert len(per_time) == 240
    assert set(per_time.values()) == {len(beacons)}
    assert all(p.level == 0 for p in truth)
    carts = [p for p in truth if site.kind_of(p.beacon) and site.kind_of(p.beacon).kind == "cart"]  # type: ignore[union-attr]
    assert len({p.beacon for p in carts}) == 60
    zones = {z.id for z in site.zones}
    assert {p.zone for p in carts if p.zone} <= zones
    assert np.mean([p.zone is not None for p in carts]) > 0.9
    # readings come from the beacons of the truth, and carts move
    assert {x.beacon for x in readings} <= beacons
    moving = {p.beacon for p in carts if (p.x, p.y) != (carts[0].x, carts[0].y)}
    assert len(moving) > 20


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    outputs = []
    for n, seed in enumerate((7, 7, 8)):
        r, t = tmp_path / f"r{n}.csv", tmp_path / f"t{n}.csv"
        argv = ["run", "--site", str(STORE), "--duration", "10", "--seed", str(seed)]
        assert main([*argv, "--speed", "max", "--out", str(r), "--truth", str(t)]) == 0
        outputs.append((r.read_bytes(), t.read_bytes()))
    assert outputs[0] == outputs[1]
    assert outputs[0][0] != outputs[2][0]
    assert outputs[0][1] != outputs[2][1]


def test_building_seed_fixes_the_building_and_leaves_the_run_to_its_seed() -> None:
    """A survey (seed 2) and a later day (seed 3) of one building (building seed 1) see the same
    static radio; without a building seed each run has its own building."""
    from simulator.scenario import RunOptions, Simulation, default_population  # noqa: PLC0415

    site = load_site(STORE)

    def sim(seed: int, building: int | None) -> Simulation:
        options = RunOptions(
            duration_s=10,
            seed=seed,
            start_s=DEFAULT_START_S,
            population=default_population(site),
            building_seed=building,
        )
        return Simulation(site, options)

    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(1, 39, 50), rng.uniform(1, 29, 50), np.full(50, 1.0)]
    level = np.zeros(50, dtype=np.int64)
    survey, later, alone, same = sim(2, 1), sim(3, 1), sim(3, None), sim(1, None)
    assert np.array_equal(survey.radio.mean_dbm(xyz, level), later.radio.mean_dbm(xyz, level))
    assert np.array_equal(survey.radio.mean_dbm(xyz, level), same.radio.mean_dbm(xyz, level))
    assert not np.allclose(later.radio.mean_dbm(xyz, level), alone.radio.mean_dbm(xyz, level))
    # the shoppers follow the run's seed, not the building's
    ends = []
    for run in (later, alone, survey):
        run.population.advance(DEFAULT_START_S + 900)
        ends.append(
            [b.track.at(np.array([DEFAULT_START_S + 900.0]))[0] for b in run.population.beacons]
        )
    assert np.array_equal(ends[0], ends[1])
    assert not np.array_equal(ends[0], ends[2])


def test_field_change_ages_the_surveyed_building_by_its_share_and_nothing_else() -> None:
    """A later day of the surveyed building with a share F of its static field drawn anew:
    the static part keeps a correlation of sqrt(1 - F) with the survey's (F = 1: a building of
    its own), and the run's shoppers are those of the same seed without it."""
    from simulator.scenario import RunOptions, Simulation, default_population  # noqa: PLC0415

    site = load_site(STORE)

    def sim(change: float) -> Simulation:
        options = RunOptions(
            duration_s=10,
            seed=3,
            start_s=DEFAULT_START_S,
            population=default_population(site),
            building_seed=1,
            field_change=change,
        )
        return Simulation(site, options)

    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(1, 39, 4000), rng.uniform(1, 29, 4000), np.full(4000, 1.0)]
    level = np.zeros(4000, dtype=np.int64)
    same, aged, other = (sim(f).radio.mean_dbm(xyz, level) for f in (0.0, 0.2, 1.0))
    surveyed = Simulation(
        site,
        RunOptions(
            duration_s=10,
            seed=2,
            start_s=DEFAULT_START_S,
            population=default_population(site),
            building_seed=1,
        ),
    ).radio.mean_dbm(xyz, level)
    assert np.array_equal(same, surveyed)
    # survey - later day = sd (1 - sqrt(1 - F)) field - sd sqrt(F) new: its variance over that
    # of a building of its own (2 sd^2) is 1 - sqrt(1 - F), 0.106 for F = 0.2
    share = np.var(aged - surveyed) / np.var(other - surveyed)
    assert 0.07 < share < 0.15, share
    ends = []
    for change in (0.0, 0.2):
        run = sim(change)
        run.population.advance(DEFAULT_START_S + 600)
        ends.append(
            [b.track.at(np.array([DEFAULT_START_S + 600.0]))[0] for b in run.population.beacons]
        )
    assert np.array_equal(ends[0], ends[1])
    with pytest.raises(ValueError, match="from 0 to 1"):
        sim(1.5)


def test_tags_can_stay_silent_about_their_power_and_differ_in_it(tmp_path: Path) -> None:
    """--no-announce blanks tx_power and nothing else; --tag-power-sd-db moves each tag's
    readings by its own offset before the receivers' sensitivity, so a stronger tag is heard
    more often, not just louder."""
    runs = {}
    for name, extra in (
        ("plain", []),
        ("silent", ["--no-announce"]),
        ("mixed", ["--no-announce", "--tag-power-sd-db", "6"]),
    ):
        r, t = tmp_path / f"{name}_r.csv", tmp_path / f"{name}_t.csv"
        argv = ["run", "--site", str(STORE), "--duration", "20", "--seed", "3", "--speed", "max"]
        assert main([*argv, "--out", str(r), "--truth", str(t), *extra]) == 0
        runs[name] = (list(read_readings(r)), t.read_bytes())
    plain, silent, mixed = (runs[k][0] for k in ("plain", "silent", "mixed"))
    assert runs["plain"][1] == runs["silent"][1] == runs["mixed"][1]  # the same shoppers
    assert {x.tx_power for x in plain} == {-59.0}
    assert {x.tx_power for x in silent} == {x.tx_power for x in mixed} == {None}
    assert [(x.t, x.gateway, x.beacon, x.rssi) for x in plain] == [
        (x.t, x.gateway, x.beacon, x.rssi) for x in silent
    ]

    def per_tag(rows: list[Any]) -> tuple[dict[str, float], Counter[str]]:
        sums: Counter[str] = Counter()
        counts: Counter[str] = Counter(x.beacon for x in rows)
        for x in rows:
            sums[x.beacon] += x.rssi
        return {b: sums[b] / counts[b] for b in counts}, counts

    (mean0, n0), (mean6, n6) = per_tag(plain), per_tag(mixed)
    tags = sorted(set(n0) & set(n6))
    shift = np.array([mean6[b] - mean0[b] for b in tags])
    heard = np.array([np.log(n6[b] / n0[b]) for b in tags])
    assert len(tags) > 50
    # less than 6 dB apart on average: a weak tag's weakest readings go unheard, a strong
    # one's join (2.9 dB measured)
    assert np.std(shift) > 2.0
    assert np.corrcoef(shift, heard)[0, 1] > 0.5


def test_heading_and_burst_loss_are_off_by_default_and_change_only_what_they_say(
    tmp_path: Path,
) -> None:
    """--heading-db 0 --burst-loss 0 writes the bytes of a run without them. --heading-db moves
    a standing tag's readings by a fixed offset per gateway and a moving cart's by one that
    changes as it turns; --burst-loss only removes readings (streams of their own), the shoppers
    stay the same."""
    runs = {}
    for name, extra in (
        ("plain", []),
        ("zero", ["--heading-db", "0", "--burst-loss", "0"]),
        ("heading", ["--heading-db", "3"]),
        ("burst", ["--burst-loss", "0.2"]),
    ):
        r, t = tmp_path / f"{name}_r.csv", tmp_path / f"{name}_t.csv"
        argv = ["run", "--site", str(STORE), "--duration", "30", "--seed", "3", "--speed", "max"]
        assert main([*argv, "--out", str(r), "--truth", str(t), *extra]) == 0
        runs[name] = (r.read_bytes(), t.read_bytes(), list(read_readings(r)))
    assert runs["zero"][:2] == runs["plain"][:2]
    assert runs["plain"][1] == runs["heading"][1] == runs["burst"][1]  # the same shoppers

    def keyed(rows: list[Any]) -> dict[tuple[float, str, str], float]:
        return {(x.t, x.gateway, x.beacon): x.rssi for x in rows}

    plain, heading, burst = (keyed(runs[k][2]) for k in ("plain", "heading", "burst"))
    assert burst.keys() <= plain.keys()
    assert all(plain[k] == v for k, v in burst.items())
    assert len(burst) < 0.9 * len(plain)
    # per link: the heading run minus the plain run, over the readings both heard
    diffs: dict[tuple[str, str], list[float]] = {}
    for k in heading.keys() & plain.keys():
        diffs.setdefault((k[2], k[1]), []).append(heading[k] - plain[k])
    truth = list(read_truth(tmp_path / "plain_t.csv"))
    start: dict[str, tuple[float, float]] = {}
    moved: set[str] = set()
    for p in truth:
        if start.setdefault(p.beacon, (p.x, p.y)) != (p.x, p.y):
            moved.add(p.beacon)
    # rounding to whole dBm leaves 1 dB of wobble; a turning cart's gain moves more
    standing = [np.ptp(d) for (b, _), d in diffs.items() if b not in moved and len(d) > 5]
    turning = [np.ptp(d) for (b, _), d in diffs.items() if b in moved and len(d) > 5]
    assert len(standing) > 50
    assert len(turning) > 50
    assert max(standing) <= 1.0 + 1e-9
    assert np.median(turning) > 2.0
    offsets = [np.mean(d) for (b, _), d in diffs.items() if b not in moved and len(d) > 5]
    assert np.std(offsets) == pytest.approx(3.0, rel=0.25)


def test_room_companion_mode_is_the_harness_noise(tmp_path: Path) -> None:
    """One sample a second along the two walks, heard by all four nodes, with Gaussian 2.5 dB
    and a 6 dB dip on 10 % of samples around the log-distance mean."""
    r, t = tmp_path / "r.csv", tmp_path / "t.csv"
    argv = ["run", "--site", str(ROOM), "--scenario", "companion", "--duration", "1820"]
    assert main([*argv, "--seed", "3", "--speed", "max", "--out", str(r), "--truth", str(t)]) == 0
    site = load_site(ROOM)
    readings = list(read_readings(r))
    truth = {(round(p.t, 3), p.beacon): p for p in read_truth(t)}
    assert len(readings) == 4 * 1820
    gw = {g.id: g for g in site.gateways}
    residual = []
    for x in readings:
        p = truth[(round(x.t, 3), x.beacon)]  # the advert is on the half second, as is truth
        g = gw[x.gateway]
        d = np.sqrt((p.x - g.x) ** 2 + (p.y - g.y) ** 2 + (1.0 - g.z) ** 2)
        residual.append(x.rssi - float(mean_rssi_dbm(d, -59.0, 3.0)))
    res = np.array(residual)
    # mean -0.6 dB (10 % x 6 dB), sd sqrt(2.5^2 + 0.09 x 36) = 3.08 dB, 10 % below -6 dB-ish
    assert res.mean() == pytest.approx(-0.6, abs=0.15)
    assert res.std() == pytest.approx(3.08, abs=0.15)
    samples = Counter((p.x, p.y) for p in truth.values())
    assert len(samples) >= 61 + 121 - 2


def test_room_tracked_mode_walks_at_0_6_m_s_with_5_adverts_a_second(tmp_path: Path) -> None:
    r, t = tmp_path / "r.csv", tmp_path / "t.csv"
    argv = ["run", "--site", str(ROOM), "--scenario", "tracked", "--duration", "60"]
    assert main([*argv, "--seed", "1", "--speed", "max", "--out", str(r), "--truth", str(t)]) == 0
    readings = list(read_readings(r))
    assert len(readings) == pytest.approx(60 / (0.2 + 0.005) * 4, rel=0.02)  # + mean advDelay
    truth = list(read_truth(t))
    step = np.hypot(np.diff([p.x for p in truth]), np.diff([p.y for p in truth]))
    assert step.max() == pytest.approx(0.6 * 0.5, abs=0.01)
    assert {p.zone for p in truth} == {"living", "bedroom"}


def test_bad_broker_and_nothing_to_do_fail_with_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["run", "--site", str(ROOM), "--duration", "1", "--seed", "1"]
    assert main(base) == 1
    assert "nothing to do" in capsys.readouterr().err
    assert main([*base, "--broker", "http://x"]) == 1
    assert "mqtt://host" in capsys.readouterr().err
    assert main([*base, "--out", "x.csv", "--tag-power-sd-db", "-1"]) == 1
    assert "--tag-power-sd-db must be 0 or more" in capsys.readouterr().err
    # an infinite run overflowed the simulator's clock; a negative seed blamed the site file
    assert main([*base, "--out", "x.csv", "--duration", "inf"]) == 1
    assert "--duration must be a positive number of seconds, got inf" in capsys.readouterr().err
    assert main([*base, "--out", "x.csv", "--seed", "-1"]) == 1
    assert "--seed must be 0 or more, got -1" in capsys.readouterr().err
    assert main([*base, "--out", "x.csv", "--building-seed", "-2"]) == 1
    assert "--building-seed must be 0 or more, got -2" in capsys.readouterr().err
    assert main([*base, "--out", "x.csv", "--heading-db", "-1"]) == 1
    assert "--heading-db must be 0 or more, got -1" in capsys.readouterr().err
    assert main([*base, "--out", "x.csv", "--burst-loss", "1.5"]) == 1
    assert "--burst-loss must be from 0 to 1, got 1.5" in capsys.readouterr().err


@pytest.mark.integration
def test_broker_run_delivers_the_same_readings_as_the_csv_run(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    start = "1735689600"
    common = ["run", "--site", str(STORE), "--duration", "20", "--seed", "4", "--start", start]
    csv_path = tmp_path / "r.csv"
    assert main([*common, "--speed", "max", "--out", str(csv_path)]) == 0

    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscribed = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311
    )

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        c.subscribe("beacons/store-demo/gateway/+/+", qos=1)

    client.on_connect = on_connect
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_message = lambda _c, _u, msg: inbox.put((msg.topic, bytes(msg.payload)))
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        assert subscribed.wait(10.0)
        truth = tmp_path / "t.csv"
        argv = [*common, "--speed", "max", "--broker", mosquitto.url, "--truth", str(truth)]
        assert main(argv) == 0
        got: list[tuple[str, bytes]] = []
        site = load_site(STORE)
        offline = 0
        while offline < len(site.gateways):
            topic, payload = inbox.get(timeout=10.0)
            got.append((topic, payload))
            if parse_topic(topic).kind == "status" and decode_status(payload).state == "offline":
                offline += 1
    finally:
        client.loop_stop()
        client.disconnect()
    from_broker = []
    seqs: dict[str, list[int]] = {}
    for topic, payload in got:
        if parse_topic(topic).kind != "readings":
            continue
        batch = decode_batch(payload)
        assert parse_topic(topic).subject == batch.gw
        seqs.setdefault(batch.gw, []).append(batch.seq)
        for i in range(len(batch)):
            t = batch.sent - batch.dt_ms[i] / 1000.0
            from_broker.append(
                (f"{t:.3f}", batch.gw, batch.beacons[batch.b[i]], batch.rssi[i], batch.tx[i])
            )
    from_csv = [
        (f"{x.t:.3f}", x.gateway, x.beacon, x.rssi, x.tx_power) for x in read_readings(csv_path)
    ]
    assert len(from_csv) > 10_000
    assert sorted(from_broker) == sorted(from_csv)
    for gw, seq in seqs.items():
        assert seq == list(range(len(seq))), gw  # in order, none lost, one boot
    assert truth.stat().st_size > 0


def test_survey_stands_the_tag_at_each_point_in_the_buildings_own_radio(tmp_path: Path) -> None:
    """--scenario survey: one tag walked at 0.6 m/s to each point and held there --dwell-s, in
    the store's realistic radio (its static field: one point's RSSI stays put), with the store's
    reference beacons and no carts."""
    points = tmp_path / "p.csv"
    points.write_text("x,y\n5,5\n10,5\n10,17\n")
    r, t = tmp_path / "r.csv", tmp_path / "t.csv"
    argv = ["run", "--site", str(STORE), "--scenario", "survey", "--points", str(points)]
    argv += ["--dwell-s", "20", "--duration", "80", "--seed", "1", "--speed", "max"]
    assert main([*argv, "--out", str(r), "--truth", str(t)]) == 0
    truth = list(read_truth(t))
    tags = {p.beacon for p in truth if p.beacon.startswith("eddystone:")}
    assert len(tags) == 1
    track = [p for p in truth if p.beacon in tags]
    at = Counter((p.x, p.y) for p in track)
    # 20 s at each point: 40 or 41 truth rows 0.5 s apart (as the arrival falls on the grid);
    # the last point a few more while the run ends
    assert at[(5.0, 5.0)] == 41
    assert at[(10.0, 5.0)] in {40, 41}
    assert at[(10.0, 17.0)] >= 2
    leaving = max(p.t for p in track if (p.x, p.y) == (5.0, 5.0))
    arriving = min(p.t for p in track if (p.x, p.y) == (10.0, 5.0))
    assert arriving - leaving == pytest.approx(5.0 / 0.6, abs=0.5)
    readings = [x for x in read_readings(r) if x.beacon in tags]
    at_first = [x.rssi for x in readings if x.t <= leaving and x.gateway == "gw-01"]
    assert len(at_first) == pytest.approx(20 / 0.2, rel=0.1)  # 5 adverts a second
    # the realistic radio's fading about a fixed mean, not the room harness's 2.5 dB noise
    assert 2.0 < np.std(at_first) < 8.0


def test_survey_needs_its_points(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = ["run", "--site", str(STORE), "--duration", "1", "--seed", "1", "--out", "x.csv"]
    assert main([*base, "--scenario", "survey"]) == 1
    assert "--scenario survey and --points go together" in capsys.readouterr().err
    points = tmp_path / "p.csv"
    points.write_text("x,y\n5,5\n50,5\n")
    assert main([*base, "--scenario", "survey", "--points", str(points)]) == 1
    assert f"{points}:3: (50, 5) is outside level 0's outline" in capsys.readouterr().err
