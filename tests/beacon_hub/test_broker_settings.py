"""What the programs let paho log: its words of no news dropped, its repeats once a minute."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from beacon_hub.broker_settings import PAHO_REPEAT_S, paho_logger


def test_paho_noise_is_dropped_and_its_repeats_said_once_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Against a TLS listener paho logged "failed to receive on socket" once a second, and
    "Client is not connected" after every clean stop and at every retry."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    name = f"test.paho.{uuid.uuid4().hex}"
    logger = paho_logger(name)
    assert paho_logger(name) is logger
    assert len(logger.filters) == 1
    reset = "failed to receive on socket: [Errno 104] Connection reset by peer"
    with caplog.at_level(logging.DEBUG, logger=name):
        logger.error("Client is not connected. Socket: None). Last known Connection State: X")
        for _ in range(5):
            logger.error(reset)
            logger.debug("Sending CONNECT")
            now[0] += 1.0
        logger.error("failed to receive on socket: [Errno 110] Connection timed out")
        now[0] += PAHO_REPEAT_S
        logger.error(reset)
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [m for lvl, m in said if lvl == logging.ERROR] == [
        reset,
        "failed to receive on socket: [Errno 110] Connection timed out",
        reset,
    ]
    assert sum(m == "Sending CONNECT" for _, m in said) == 5
