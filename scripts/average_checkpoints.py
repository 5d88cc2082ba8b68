"""Kept for old command lines: the same as ``nmt-average`` / ``python -m nmt.average``."""

from nmt.average import cli

if __name__ == "__main__":
    cli()
