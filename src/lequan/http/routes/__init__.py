"""One routes module per audience: channel, acquirer, admin, ops."""
