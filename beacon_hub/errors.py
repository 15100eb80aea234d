"""The project's small exception hierarchy.

Every error a user can cause (a config, a CSV, an MQTT payload, a BLE frame) is one of these and
says where and what; nothing else escapes a parser.
"""

__all__ = ["BeaconHubError", "ConfigError", "CsvError", "IdError", "WireError"]


class BeaconHubError(Exception):
    """Base of every error beacon-hub raises on purpose."""


class WireError(BeaconHubError, ValueError):
    """A payload or topic we refuse, with the reason a human can act on."""


class IdError(WireError):
    """A beacon, site or gateway id that is not in the canonical form of DESIGN.md."""


class ConfigError(BeaconHubError, ValueError):
    """A configuration or site file that does not validate.

    `problems` holds one line per problem, each naming the file, the place in it and what was
    expected, so a user can fix them all in one pass.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{source}: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class CsvError(BeaconHubError, ValueError):
    """A CSV file we refuse: names the file, the line and the column."""
