"""eurotron-summary: a Markdown draft of the EU training-content summary from prepare reports.

  eurotron-summary reports='[data/demo/report.json]'
  eurotron-summary reports='[data/de/report.json,data/fr/report.json]' output=summary.md \
      provider.name="Example AI GmbH" provider.contact=ai@example.eu model.name=Eurotron-8B model.version=1.0

Provider and model fields come from configs/summary.yaml (override them on the command line).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from ..config import SummaryConfig, register_configs
from ..paths import config_dir
from .common import exit_on_user_error, typed_config

register_configs()


def run(cfg: DictConfig) -> str:
    from ..data.filters.summary import load_reports, render_summary

    summary_cfg: SummaryConfig = typed_config(cfg, SummaryConfig)
    text = render_summary(summary_cfg, load_reports(summary_cfg.reports))
    if summary_cfg.output:
        out = Path(summary_cfg.output).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"eurotron-summary: wrote {out}", flush=True)
    else:
        print(text, end="", flush=True)
    return text


@hydra.main(version_base=None, config_path=str(config_dir()), config_name="summary")
def main(cfg: DictConfig) -> None:
    exit_on_user_error("eurotron-summary", lambda: run(cfg))


if __name__ == "__main__":
    main()
