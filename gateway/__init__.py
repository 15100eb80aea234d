"""beacon-gateway: the Raspberry Pi daemon that scans BLE beacons and publishes batches.

Imports no numpy, scipy, filterpy or influxdb-client: it runs on a Pi Zero with only the base
dependencies and the `[gateway]` extra.
"""

__all__: list[str] = []
