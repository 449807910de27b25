"""Fresh-process check of an emitted HF checkpoint, using plain transformers only.

Run as a script (`python -I selfcheck_script.py JOBS`); it must never import prunec, so
the checkpoint is proven loadable by anyone. JOBS is a JSON list of [CHECKPOINT, PAYLOAD,
RESULT] triples, checked in one process (transformers is imported once). PAYLOAD is a torch
file with `cases` (a list of {"inputs": dict, "logits": tensor}), `class_name`, `is_vlm`,
`trust` and `layer_counts` (dotted config keys to report). RESULT receives JSON.
"""

import json
import sys
import time
from typing import Any


def _model_class(name, is_vlm, trust):
    import transformers

    if hasattr(transformers, name):
        return getattr(transformers, name), {}
    auto = transformers.AutoModelForImageTextToText if is_vlm else transformers.AutoModelForCausalLM
    return auto, {"trust_remote_code": trust}


def _config_value(config, dotted):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def main(checkpoint, payload_path, result_path):
    import torch

    started = time.perf_counter()
    payload = torch.load(payload_path, weights_only=False)
    cls, extra = _model_class(payload["class_name"], payload["is_vlm"], payload["trust"])
    model, info = cls.from_pretrained(checkpoint, output_loading_info=True, **extra)
    model.eval()
    result: dict[str, Any] = {
        "missing_keys": sorted(info.get("missing_keys", [])),
        "unexpected_keys": sorted(info.get("unexpected_keys", [])),
        "mismatched_keys": [str(k) for k in info.get("mismatched_keys", [])],
        "config_counts": {k: _config_value(model.config, k) for k in payload["layer_counts"]},
        "diffs": [],
        "generated": [],
    }
    for case in payload["cases"]:
        inputs = case["inputs"]
        with torch.no_grad():
            logits = model(**inputs).logits.float()
        expected = case["logits"].float()
        if logits.shape != expected.shape:
            result["diffs"].append(float("inf"))
        else:
            result["diffs"].append(float((logits - expected).abs().max()))
        prompt_len = inputs["input_ids"].shape[-1]
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=True)
        result["generated"].append(out[0, prompt_len:].tolist())
    result["prunec_imported"] = "prunec" in sys.modules
    result["seconds"] = time.perf_counter() - started
    with open(result_path, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    with open(sys.argv[1]) as jobs:
        for checkpoint, payload_path, result_path in json.load(jobs):
            main(checkpoint, payload_path, result_path)
