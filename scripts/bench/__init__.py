"""scripts/benchmark.py's parts: ``arms`` (what is run), ``worker`` (one timed run in its own
process), ``report`` (the JSON report's pieces and its markdown tables). The command line and
the parent's loop over the arms are in scripts/benchmark.py, which imports this package from
its own directory."""
