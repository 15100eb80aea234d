"""Bytes the gateway's disk buffer makes the storage device write, per batch (docs/gateway.md,
*The disk buffer and SD card wear*).

    sudo python scripts/gateway_sd_wear.py --folder /mnt/sd/wear --device loop0 \
        [--persist outage|every_batch] [--batches 200] [--interval-s 0.05]

Runs the real `Publisher` with a `DiskBuffer` in `--folder` against a Mosquitto of its own
(tests.servers, so run it from the repository) and reads the sectors written by `--device` (the
block device holding the folder: `mmcblk0` on a Pi, a loop device for an image) from
/sys/block/DEVICE/stat, after a `sync` and a wait past ext4's 5 s journal commit. Nothing else
should write to that device meanwhile (a dedicated image: `truncate -s 512M sd.img; mkfs.ext4
sd.img; mount -o loop sd.img /mnt/sd`). Two phases:

- normal: the broker up, each batch submitted and acknowledged before the next;
- outage: the broker stopped, the batches submitted (the buffer takes them), then the broker
  back and the backlog sent (the files deleted).

Prints one line per phase; the last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from the checkout

from beacon_hub.wire import ReadingBatch, encode_batch
from gateway.buffer import DiskBuffer
from gateway.config import BrokerConfig
from gateway.publisher import Publisher
from tests.servers import Mosquitto

SECTOR_BYTES: Final = 512
"""/sys/block/*/stat counts 512-byte sectors whatever the device's block size (kernel
Documentation/block/stat.rst)."""
COMMIT_WAIT_S: Final = 6.0
"""ext4 commits its journal every 5 s by default (`commit=` mount option): wait past one so the
unlinks of the last batches are counted too."""
TIMEOUT_S: Final = 60.0
"""Fail-safe for the broker to connect or drain; not a measurement."""
SAMPLES_PER_BATCH: Final = 85
"""With 10 iBeacon ids this encodes to about 1.8 KB, a busy shop floor's one-second window."""


def _written_sectors(device: str) -> int:
    return int(Path(f"/sys/block/{device}/stat").read_text().split()[6])


def _settled(device: str) -> int:
    os.sync()
    time.sleep(COMMIT_WAIT_S)
    os.sync()
    return _written_sectors(device)


def _batch(seq: int) -> ReadingBatch:
    beacons = tuple(f"ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:{i}" for i in range(10))
    n = SAMPLES_PER_BATCH
    return ReadingBatch(
        "gw-wear",
        "00c0ffee",
        seq,
        time.time(),
        beacons,
        tuple(i % len(beacons) for i in range(n)),
        tuple(float(11 * i) for i in range(n)),
        tuple(-60.0 - i % 30 for i in range(n)),
        (None,) * n,
    )


async def _measure(args: argparse.Namespace, broker: Mosquitto) -> dict[str, float]:
    device, batches = args.device, args.batches
    publisher = Publisher(
        BrokerConfig.model_validate({"url": broker.url}),
        site="wear",
        gateway_id="gw-wear",
        boot="00c0ffee",
        version="wear",
        buffer=DiskBuffer(args.folder, max_batches=batches),
        inflight=10,
        persist_every_batch=args.persist == "every_batch",
    )
    await publisher.start()
    await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
    size = len(encode_batch(_batch(0)))
    kib = SECTOR_BYTES / 1024 / batches

    before = await asyncio.to_thread(_settled, device)
    for seq in range(batches):
        publisher.submit(_batch(seq))
        await asyncio.wait_for(publisher._drained.wait(), TIMEOUT_S)
        await asyncio.sleep(args.interval_s)
    normal = (await asyncio.to_thread(_settled, device) - before) * kib
    print(f"normal: {batches} batches of {size} B acknowledged: {normal:.2f} KiB/batch")

    await asyncio.to_thread(broker.stop)
    await asyncio.wait_for(publisher.disconnected.wait(), TIMEOUT_S)
    before = await asyncio.to_thread(_settled, device)
    for seq in range(batches, 2 * batches):
        publisher.submit(_batch(seq))
        await asyncio.sleep(args.interval_s)
    during = await asyncio.to_thread(_settled, device)
    await asyncio.to_thread(broker.start)
    await asyncio.wait_for(publisher.connected.wait(), TIMEOUT_S)
    await asyncio.wait_for(publisher._drained.wait(), TIMEOUT_S)
    after = await asyncio.to_thread(_settled, device)
    await publisher.stop(drain_timeout_s=TIMEOUT_S)
    outage, drain = (during - before) * kib, (after - during) * kib
    print(f"outage: {outage:.2f} KiB/batch while away, {drain:.2f} KiB/batch sending the backlog")
    return {
        "batch_bytes": size,
        "normal_kib_per_batch": round(normal, 2),
        "outage_kib_per_batch": round(outage, 2),
        "backlog_kib_per_batch": round(drain, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, required=True, help="buffer folder on the device")
    parser.add_argument("--device", required=True, help="block device name, e.g. mmcblk0, loop0")
    parser.add_argument("--persist", choices=["outage", "every_batch"], default="outage")
    parser.add_argument("--batches", type=int, default=200, help="per phase")
    parser.add_argument("--interval-s", type=float, default=0.05, help="between batches")
    args = parser.parse_args()
    broker = Mosquitto(Path(tempfile.mkdtemp(prefix="sd-wear-mosquitto-")))
    broker.start()
    try:
        figures = asyncio.run(_measure(args, broker))
    finally:
        broker.stop()
    print(json.dumps({"persist": args.persist, **figures}))


if __name__ == "__main__":
    main()
