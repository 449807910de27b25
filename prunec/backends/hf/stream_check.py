"""Self-check of a streamed checkpoint, run in a child process so the build never loads weights.

The child loads the ORIGINAL model, runs it with the removed layers skipped
(`prunec.arch.skip_layers`, the same changes as `remove_layers`) to get reference logits, and
hands them to the usual fresh-process check (`prunec.backends.hf.emit.run_self_checks`), which
reloads the streamed checkpoint with plain transformers and compares. Each process holds one
copy of the model at most; the build process holds none.

    python -m prunec.backends.hf.stream_check MODEL_SPEC_JSON OUT_DIR REMOVED_JSON RESULT_JSON
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prunec.errors import BuildError
from prunec.plan.model import ModelSpec

if TYPE_CHECKING:
    from prunec.backends.hf.emit import SelfCheckJob


def self_check_streamed(
    model: ModelSpec, out_dir: Path, removed: Sequence[int]
) -> tuple[float, bool, int]:
    """(max |logit diff|, generate ok, inputs checked) for the streamed checkpoint `out_dir`.

    Raises BuildError when the checkpoint does not reproduce the original with `removed`
    skipped, does not load with plain transformers, or cannot generate.
    """
    result_path = Path(out_dir).parent / f".{Path(out_dir).name}.selfcheck.json"
    cmd = [
        sys.executable,
        "-m",
        __name__,
        model.model_dump_json(),
        str(out_dir),
        json.dumps(list(removed)),
        str(result_path),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0 or not result_path.exists():
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            reason = lines[-1] if lines else f"exit code {proc.returncode}"
            raise BuildError(f"self-check of the streamed checkpoint failed: {reason}")
        result = json.loads(result_path.read_text())
    finally:
        result_path.unlink(missing_ok=True)
    return float(result["diff"]), bool(result["generate_ok"]), int(result["inputs"])


def streamed_check_job(model: ModelSpec, out_dir: Path, removed: Sequence[int]) -> SelfCheckJob:
    """The fresh-process check of the streamed checkpoint `out_dir`: the ORIGINAL `model` run
    with `removed` skipped, on `default_inputs` (synthetic ids when the model folder has no
    usable tokenizer). The original is released when this returns."""
    from prunec.arch import skip_layers
    from prunec.arch.loading import load_model
    from prunec.backends.hf.emit import default_inputs, prepare_self_check

    loaded = load_model(model)
    cases = default_inputs(loaded)
    with skip_layers(loaded.model, removed):
        return prepare_self_check(loaded, Path(out_dir), cases)


def _main(argv: Sequence[str]) -> None:
    from prunec.backends.hf.emit import run_self_checks

    spec_json, out_dir, removed_json, result_path = argv
    removed = [int(i) for i in json.loads(removed_json)]
    job = streamed_check_job(ModelSpec.model_validate_json(spec_json), Path(out_dir), removed)
    # The original model is freed by now: the fresh checking process loads the pruned copy.
    [(diff, generate_ok)] = run_self_checks([job])
    inputs = len(job.payload["cases"])
    Path(result_path).write_text(
        json.dumps({"diff": diff, "generate_ok": generate_ok, "inputs": inputs})
    )


if __name__ == "__main__":
    try:
        _main(sys.argv[1:])
    except BuildError as err:
        print(f"{err}", file=sys.stderr)
        raise SystemExit(3) from None
