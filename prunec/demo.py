"""`make demo`: train the bundled testbed VLM once, then build specs/math_tutor.prune end to end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def repo_root() -> Path:
    """The checkout this demo runs from (the directory holding specs/ and grammar/)."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (candidate / "specs" / "math_tutor.prune").is_file():
            return candidate
    raise SystemExit("run the demo from a prunec checkout (specs/math_tutor.prune not found)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prunec.demo", description=__doc__)
    parser.add_argument("--spec", default="specs/math_tutor.prune", help="spec to build")
    parser.add_argument("--retrain", action="store_true", help="train the testbed again")
    args = parser.parse_args(argv)

    root = repo_root()
    from rich.console import Console

    console = Console(stderr=True)
    console.rule("[bold]prunec demo: 1/2 testbed model")
    from prunec.pipeline import quiet_transformers
    from prunec.testbed import ensure_testbed

    quiet_transformers()
    paths = ensure_testbed(root / "build" / "testbed", force=args.retrain)
    accuracy = ", ".join(f"{d} {a:.1%}" for d, a in paths.info["eval_accuracy"].items())
    console.print(
        f"testbed {paths.model.relative_to(root)}: trained in {paths.info['train_seconds']}s, "
        f"held-out greedy accuracy {accuracy}"
    )

    console.rule("[bold]prunec demo: 2/2 prunec build " + args.spec)
    from prunec.cli import main as cli_main

    cli_main(["build", str(root / args.spec)])


if __name__ == "__main__":
    main(sys.argv[1:])
