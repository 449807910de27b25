"""The `prunec` command line. Each command is a thin wrapper over a pipeline stage.

This module is the one place where errors become exit codes and stderr text. It must stay
light to import: torch/transformers/onnx are imported inside the commands that need them,
so `check` and `fmt` start instantly.
"""

from __future__ import annotations

import os

# Before torch loads: OpenMP threads that spin while waiting collapse when another process
# shares the cores (measured here: a 16-layer forward took 2.4 s instead of 35 ms with two
# threads on a busy 2-core machine). Passive waiting costs little when the machine is idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import signal
import sys
import traceback
from collections.abc import Sequence
from importlib import import_module

import click

from prunec import __version__
from prunec.errors import ExitCode, PrunecError


class _State:
    debug = False


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, Kubernetes, Slurm) arrived: unwind like Ctrl-C, so every staging
    directory is removed and no target is touched."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup
    raise Terminated()


def _interrupted(err: BaseException) -> None:
    terminated = isinstance(err, Terminated)
    how = "terminated (SIGTERM)" if terminated else "interrupted"
    click.echo(f"{how}; targets were left as they were", err=True)
    code = ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED
    raise SystemExit(int(code)) from None


def _fail(err: PrunecError) -> None:
    click.echo(_rank_prefix() + err.render(), err=True)
    if _State.debug:
        traceback.print_exception(err)
    raise SystemExit(int(err.exit_code))


#: command name -> (module defining `command`, one-line help). Modules are imported only when
#: their command runs, so `prunec check` never pays for torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("prunec.commands.check", "Validate spec files and report every problem."),
    "fmt": ("prunec.commands.fmt", "Rewrite spec files in canonical form (keeps comments)."),
    "schema": ("prunec.commands.schema", "Print the JSON Schema of the validated plan."),
    "score": ("prunec.commands.score", "Run calibration and write per-layer, per-domain scores."),
    "plan": ("prunec.commands.plan", "Show which layers would be removed, without emitting."),
    "build": ("prunec.commands.build", "Score, plan, emit targets, verify and write the lockfile."),
    "run": ("prunec.commands.run", "Generate text with an ONNX artifact (onnxruntime only)."),
    "sweep": ("prunec.commands.sweep", "Evaluate retention across budgets and strategies."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = import_module(COMMANDS[name][0])
        command: click.Command = module.command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="prunec")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for every error.")
def cli(debug: bool) -> None:
    """prunec — compile a .prune spec into a depth-pruned model."""
    _State.debug = debug


def _distributed() -> bool:
    """Launched as one of several processes (torchrun / accelerate launch)?"""
    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def _rank_prefix() -> str:
    """`[rank R/N] ` before error text in a distributed launch, where every process prints."""
    if not _distributed():
        return ""
    return f"[rank {os.environ.get('RANK', '?')}/{os.environ.get('WORLD_SIZE')}] "


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: runs the CLI and maps every failure to a named exit code."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    if _distributed():
        from prunec.distributed import is_worker, shutdown

        if is_worker():  # rank 0 prints the results; the others only report their errors
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        import atexit

        atexit.register(shutdown)
    try:
        rc = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except PrunecError as err:
        _fail(err)
    except click.exceptions.Abort as err:
        _interrupted(err.__cause__ if isinstance(err.__cause__, Terminated) else err)
    except KeyboardInterrupt as err:
        _interrupted(err)
    except click.exceptions.Exit as ex:
        raise SystemExit(ex.exit_code) from None
    except click.ClickException as ex:
        ex.show()
        raise SystemExit(int(ExitCode.USAGE)) from None
    except Exception as ex:  # a bug: say so plainly, traceback only on request
        if _State.debug:
            raise
        click.echo(f"{_rank_prefix()}internal error: {type(ex).__name__}: {ex}", err=True)
        click.echo("this is a bug in prunec; rerun with --debug for the traceback", err=True)
        raise SystemExit(int(ExitCode.INTERNAL)) from None
    raise SystemExit(int(rc) if isinstance(rc, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
