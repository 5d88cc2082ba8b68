"""nmt.cli: what the five entry points share (their commands' messages and statuses are tested
end to end in test_reliability.py, test_evaluate.py, test_prepare.py, test_serve.py ...)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from nmt.cli import to_config, user_errors
from nmt.config import ConfigError, PrepareConfig, TranslateConfig


def test_user_errors_end_in_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info, user_errors(ConfigError, KeyError):
        raise ConfigError("model.dropout=2: must be in [0, 1)")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: model.dropout=2: must be in [0, 1)\n"


def test_other_errors_pass_through() -> None:
    with pytest.raises(RuntimeError, match="a bug"), user_errors(ConfigError):
        raise RuntimeError("a bug")


def test_to_config_builds_and_checks_the_dataclass() -> None:
    cfg = to_config(OmegaConf.structured(PrepareConfig), PrepareConfig)
    assert isinstance(cfg, PrepareConfig) and cfg == PrepareConfig()
    bad = OmegaConf.structured(TranslateConfig(ckpt="x.pt"))
    bad.decode.beam_size = 0
    with pytest.raises(ValueError, match="beam_size"):
        to_config(bad, TranslateConfig)
