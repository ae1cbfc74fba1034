"""Web assets served by lequan itself (vendored from the npm registry, pinned)."""
