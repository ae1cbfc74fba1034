"""Adapters: the real and in-process implementations of lequan's ports."""
