"""The lab: measure lequan against its baselines, and rehearse a flash crowd.

Lab equipment, kept out of the product's wheel so that it ships to no
operator: baselines, a redis-server cluster spawner, uvicorn launchers, a
load generator and a bulk loader that writes straight into the tables.
Run it from the repository as ``python -m benchmarks`` (``make bench``) or
``python -m benchmarks simulate`` (``make simulate``). The test suite uses
its spawners too; the product never imports it.
"""
