"""lequan: government consumption vouchers and trade-in subsidies."""

__version__ = "0.1.0"
__all__ = ["__version__"]
