"""beacon-sim: simulated sites, agents and radio that publish the same batches as gateways."""

__all__: list[str] = []
