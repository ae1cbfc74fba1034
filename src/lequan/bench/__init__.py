"""``lequan bench``: measure the platform and its baselines in one run on one machine."""
