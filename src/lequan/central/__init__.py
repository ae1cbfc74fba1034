"""The central (national) platform: the national registry of trade-in qualifications
and of subsidised serial numbers, and the sink of every redemption detail.

Its own process (``lequan central serve``), its own store (``central.store``,
migrated into its own version table) and its own keys. Layers, as in the
province: pure rules in ``lequan.domain.qualification``, the use cases in
``services``, the store's port in ``ports``, the SQL store in ``store/``, the
signed HTTP API in ``http/``, and one composition root, ``bootstrap``.
Provinces reach it through ``lequan.ports.central``; see docs/central.md.
"""
