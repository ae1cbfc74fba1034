"""The pure domain of lequan: rules and arithmetic, no I/O and no clock reads."""
