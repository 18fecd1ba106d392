"""Applications on top of the core: the `track` command line, `track live` and `track serve` (+ web/)."""
