"""Power-cycling a BlueZ adapter over D-Bus: the last resort of the scan supervisor.

A controller whose firmware wedged (the Pi's UART-attached radio does this under load) keeps
answering `org.bluez.Error.Failed` or `NotReady` until it is powered off and on. Setting
`org.bluez.Adapter1.Powered` needs no root: Debian's D-Bus policy for BlueZ lets members of the
`bluetooth` group do it, which is what the systemd unit grants.
"""

from __future__ import annotations

import asyncio
from typing import Final

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio.message_bus import MessageBus

__all__ = ["DEFAULT_ADAPTER", "power_cycle"]

DEFAULT_ADAPTER: Final = "hci0"
POWER_OFF_S: Final = 1.0
"""Time the adapter stays off; BlueZ needs a moment to tear down before it powers on again."""


async def _set_powered(bus: MessageBus, adapter: str, powered: bool) -> None:
    reply = await bus.call(
        Message(
            destination="org.bluez",
            path=f"/org/bluez/{adapter}",
            interface="org.freedesktop.DBus.Properties",
            member="Set",
            signature="ssv",
            body=["org.bluez.Adapter1", "Powered", Variant("b", powered)],
        )
    )
    if reply is None or reply.message_type == MessageType.ERROR:
        detail = "no reply" if reply is None else f"{reply.error_name} {reply.body}"
        raise OSError(f"setting {adapter} Powered={powered} failed: {detail}")


async def power_cycle(adapter: str | None) -> None:
    """Power `adapter` (default hci0) off and on again; OSError if BlueZ refuses."""
    name = adapter or DEFAULT_ADAPTER
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        await _set_powered(bus, name, False)
        await asyncio.sleep(POWER_OFF_S)
        await _set_powered(bus, name, True)
    finally:
        bus.disconnect()
