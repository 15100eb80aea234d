"""beacon-hub: BLE beacon ingestion and indoor location for retail.

This package's import pulls in nothing heavy (no numpy, scipy, filterpy or influxdb-client), so
the gateway on a Pi Zero can share the wire contract with the hub. Heavy stages import their
dependencies in their own modules.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
