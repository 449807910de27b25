"""One module per CLI command; each defines a click command named `command`.

Options shared by several commands are defined here once.
"""

from __future__ import annotations

from pathlib import Path

import click

#: `--cache-dir` of every command that scores (score, plan, build, sweep).
cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Score cache directory (default: $PRUNEC_CACHE_DIR or ~/.cache/prunec).",
)
