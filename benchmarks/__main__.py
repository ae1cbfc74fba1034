"""``python -m benchmarks``, run from the repository's root (``make bench``)."""

from benchmarks.cli import main

main()
