"""`python -m nmt.prepare`: train SentencePiece, encode and cache a parallel corpus.

Composes configs/prepare.yaml over the `PrepareConfig` schema, e.g.
`python -m nmt.prepare data.dir=data/demo.es-en data.src=es data.tgt=en tokenizer.vocab_size=4000`.
Relative paths are taken from the current directory. Bad input prints one line
`error: <message>` on stderr and exits with status 2.
"""

from __future__ import annotations

import json
import logging
import sys

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from nmt.cache import prepare  # not nmt.data: prepare needs no torch (~200 MB)
from nmt.cli import to_config, user_errors
from nmt.config import ConfigError, PrepareConfig
from nmt.textio import DataError

ConfigStore.instance().store(name="prepare_schema", node=PrepareConfig)


@hydra.main(version_base="1.3", config_path="configs", config_name="prepare")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s][%(name)s] %(message)s",
        stream=sys.stderr,
        force=True,  # replace the handler Hydra installs on the root logger (stdout)
    )
    with user_errors(DataError, ConfigError):
        conf = to_config(cfg, PrepareConfig)
        prepared = prepare(conf.data, conf.tokenizer)
    print(json.dumps(prepared.summary, indent=2))
    print(f"summary: {prepared.path / 'summary.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
