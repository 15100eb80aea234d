"""`beacon-gateway`: the Pi daemon's command line.

Exit codes follow the LSB init-script convention systemd documents (systemd.exec, "Process exit
codes"): 0 clean stop, 1 bad config, 5 (EXIT_NO_RADIO, "program is not installed") when there is
no Bluetooth radio, BlueZ or permission to use them, so `systemctl status` tells a missing radio
apart from a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from beacon_hub.commands import EXIT_OK, add_set_option, dispatch, new_parser, overrides_from
from gateway.config import load_gateway_config
from gateway.daemon import Gateway
from gateway.watchdog import NoRadioError

__all__ = ["EXIT_NO_RADIO", "main"]

PROG = "beacon-gateway"
EXIT_NO_RADIO: Final = 5


def _run(args: argparse.Namespace) -> int:
    config = load_gateway_config(args.config, overrides_from(args.overrides))
    logging.basicConfig(
        level=config.log_level,
        stream=sys.stderr,
        # journald stamps each line itself; a second timestamp would only add noise
        format="%(levelname)s %(name)s: %(message)s",
    )

    async def main_loop() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Gateway(config).run(stop)

    try:
        asyncio.run(main_loop())
    except NoRadioError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_NO_RADIO
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser(PROG, "BLE gateway: scan beacons with bleak and publish batches over MQTT.")
    verbs = parser.add_subparsers(title="commands", metavar="COMMAND")
    run = verbs.add_parser("run", help="scan and publish until stopped")
    run.add_argument("--config", type=Path, required=True, metavar="G.yaml")
    add_set_option(run)
    run.set_defaults(handler=_run)
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
