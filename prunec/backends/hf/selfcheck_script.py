"""Fresh-process check of an emitted HF checkpoint, using plain transformers only.

Run as a script; it must never import prunec, so the checkpoint is proven loadable by
anyone. Two modes:

    python -I selfcheck_script.py JOBS
        Full check. JOBS is a JSON list of [CHECKPOINT, PAYLOAD, RESULT] triples, checked in
        one process (transformers is imported once). PAYLOAD is a torch file with `cases` (a
        list of {"inputs": dict, "logits": tensor}), `class_name`, `is_vlm`, `trust`,
        `layer_counts` (dotted config keys to report) and `compute_dtype`. The whole
        checkpoint is reloaded and run on every case; RESULT receives JSON.

    python -I selfcheck_script.py --light JOBS
        Check without holding the model. JOBS is a JSON list of {"payload", "result"}; each
        payload names the `source` and `checkpoint` folders, the `removed` layers, the prefix lengths `source_layers` / `kept_layers` and
        the `input_ids`. The source's first `source_layers` layers (removed ones made
        identities) run first, while the caller may still be writing the checkpoints; the
        process then waits for a line on stdin, loads the whole checkpoint on the meta device
        (names, shapes and config, no data) and its first `kept_layers` layers, compares the
        two decoders' outputs, and decodes the last token with the KV cache of the others.
        The vocabulary projection never runs, so the embedding matrix is never read whole.
        Each result file receives JSON.

Both modes compute in `compute_dtype`: when that is wider than the stored weights, every
module's weights are converted just before it runs and dropped after (the same arithmetic
as prunec's calibration), so a float32 reference is compared with float32 arithmetic.
"""

import json
import sys
import time
from typing import Any

ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


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


# --- compute in a wider dtype than the weights are stored in --------------------------------


#: As in prunec's calibration: parameters up to SMALL are converted once; at most BLOCK
#: elements are converted at a time (module subtrees up to it as a unit, larger linear
#: weights in row blocks, embeddings only the rows looked up).
SMALL, BLOCK = 1 << 18, 1 << 24


def _upcast(model, dtype_name):
    """Compute in `dtype_name` while the weights stay as loaded (see the module docstring)."""
    import torch

    dtype = getattr(torch, dtype_name)
    stored = next(p.dtype for p in model.parameters() if p.is_floating_point())
    if ITEMSIZE[dtype_name] <= stored.itemsize:
        return
    for param in _small_or_first(model):
        param.data = param.data.to(dtype)

    def converted(owners):
        return [
            (owner._parameters, name)
            for owner in owners
            for name, p in owner._parameters.items()
            if p is not None and p.is_floating_point() and p.dtype != dtype
        ]

    in_unit: set[int] = set()
    for module in model.modules():
        subtree = list(module.modules())
        params = converted(subtree)
        unit = bool(params) and len(subtree) > 1 and _is_unit(module, params)
        if unit and id(module) not in in_unit:
            in_unit.update(id(m) for m in subtree)
        else:
            params = converted([module])
        if params:
            module.forward = _wrapped(module, params, dtype, module.forward)


def _is_unit(module, params):
    import torch

    if type(module).forward is torch.nn.Module.forward:  # containers: forward never runs
        return False
    if type(module).__module__.startswith("torch.nn.") and module._parameters:
        return True
    return sum(table[name].numel() for table, name in params) <= BLOCK


def _small_or_first(model):
    from transformers import PreTrainedModel

    chosen = {id(p): p for p in model.parameters() if p.numel() <= SMALL}
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            first = next((p for p in module.parameters() if p.is_floating_point()), None)
            if first is not None and first.numel() <= BLOCK:
                chosen[id(first)] = first
    return list(chosen.values())


def _wrapped(module, params, dtype, original):
    import torch

    def cast(value):
        if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
            return value.to(dtype)
        return value

    if isinstance(module, torch.nn.Embedding) and params == [(module._parameters, "weight")]:

        def embed(ids, *args, **kwargs):
            weight: Any = module._parameters["weight"]
            padding = module.padding_idx
            rows, inverse = torch.unique(ids, return_inverse=True)
            module._parameters["weight"], module.padding_idx = weight[rows].to(dtype), None
            try:
                return original(inverse, *args, **kwargs)
            finally:
                module._parameters["weight"], module.padding_idx = weight, padding

        return embed

    if type(module) is torch.nn.Linear and module.weight.numel() > BLOCK:

        def blocked(x):
            weight: Any = module._parameters["weight"]
            bias: Any = module._parameters["bias"]
            step = max(1, BLOCK // weight.shape[1])
            parts = [
                torch.nn.functional.linear(
                    cast(x),
                    weight[i : i + step].to(dtype),
                    None if bias is None else bias[i : i + step].to(dtype),
                )
                for i in range(0, weight.shape[0], step)
            ]
            return torch.cat(parts, dim=-1)

        return blocked

    def forward(*args, **kwargs):
        held = [(table, name, table[name]) for table, name in params]
        try:
            for table, name, value in held:
                table[name] = value.to(dtype)
            return original(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})
        finally:
            for table, name, value in held:
                table[name] = value

    return forward


# --- full check ----------------------------------------------------------------------------------


def main(checkpoint, payload_path, result_path):
    import torch

    started = time.perf_counter()
    payload = torch.load(payload_path, weights_only=False)
    cls, extra = _model_class(payload["class_name"], payload["is_vlm"], payload["trust"])
    model, info = cls.from_pretrained(checkpoint, output_loading_info=True, **extra)
    model.eval()
    compute = payload.get("compute_dtype")
    if compute:
        _upcast(model, compute)
    result: dict[str, Any] = {
        "missing_keys": sorted(info.get("missing_keys", [])),
        "unexpected_keys": sorted(info.get("unexpected_keys", [])),
        "mismatched_keys": [str(k) for k in info.get("mismatched_keys", [])],
        "config_counts": {k: _config_value(model.config, k) for k in payload["layer_counts"]},
        "diffs": [],
        "generated": [],
    }
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    if compute:
        dtype = getattr(torch, compute) if ITEMSIZE[compute] > dtype.itemsize else dtype
    for case in payload["cases"]:
        inputs = {
            k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in case["inputs"].items()
        }
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


# --- light check ---------------------------------------------------------------------------------


def _truncated(path, cls, extra, layers, compute):
    """The first `layers` decoder layers of the checkpoint at `path` (per-layer config lists
    cut to match), computing in `compute`."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, **extra)
    text = config.get_text_config(decoder=True)
    total = text.num_hidden_layers
    for key, value in list(vars(text).items()):
        if isinstance(value, list) and len(value) == total:
            setattr(text, key, value[:layers])
    text.num_hidden_layers = layers
    model = cls.from_pretrained(path, config=config, **extra).eval()
    _upcast(model, compute)
    return model


def _decoder_output(model, ids):
    import torch

    with torch.no_grad():
        out = model.get_decoder()(input_ids=ids, use_cache=False)
    return out.last_hidden_state.float()


def _cached_last_state(model, ids):
    """The last position's decoder output when the last token is decoded with the KV cache of
    the others (what `generate` does), without the vocabulary projection."""
    import inspect

    import torch

    decoder = model.get_decoder()
    name = (
        "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    )
    with torch.no_grad():
        first = decoder(input_ids=ids[:, :-1], use_cache=True)
        cache = getattr(first, "cache", None) or first.past_key_values
        last = decoder(input_ids=ids[:, -1:], use_cache=True, **{name: cache})
    return last.last_hidden_state[:, -1].float()


def light(jobs_path):
    """Every job's reference first, then (after one line on stdin) every checkpoint."""
    with open(jobs_path) as fh:
        jobs = json.load(fh)
    references = [_light_reference(job["payload"]) for job in jobs]
    sys.stdin.readline()  # the checkpoints are complete
    for job, reference in zip(jobs, references, strict=True):
        result = _light_compare(job["payload"], reference)
        with open(job["result"], "w") as fh:
            json.dump(result, fh)


def _light_reference(payload):
    """The source prefix's decoder output with the removed layers turned into identities."""
    import gc

    import torch

    cls, extra = _model_class(payload["class_name"], payload["is_vlm"], payload["trust"])
    ids = torch.tensor([payload["input_ids"]])
    source = _truncated(
        payload["source"], cls, extra, payload["source_layers"], payload["compute_dtype"]
    )
    layers = source.get_decoder().layers
    for index in payload["removed"]:
        if index < len(layers):
            layers[index].forward = lambda hidden_states, *args, **kwargs: hidden_states
    reference = _decoder_output(source, ids)
    del source, layers
    gc.collect()
    return reference


def _light_compare(payload, reference):
    import torch

    started = time.perf_counter()
    cls, extra = _model_class(payload["class_name"], payload["is_vlm"], payload["trust"])
    ids = torch.tensor([payload["input_ids"]])
    model, info = cls.from_pretrained(
        payload["checkpoint"], device_map="meta", output_loading_info=True, **extra
    )
    result: dict[str, Any] = {
        "missing_keys": sorted(info.get("missing_keys", [])),
        "unexpected_keys": sorted(info.get("unexpected_keys", [])),
        "mismatched_keys": [str(k) for k in info.get("mismatched_keys", [])],
        "config_counts": {k: _config_value(model.config, k) for k in payload["layer_counts"]},
    }
    del model
    pruned = _truncated(
        payload["checkpoint"], cls, extra, payload["kept_layers"], payload["compute_dtype"]
    )
    output = _decoder_output(pruned, ids)
    same = output.shape == reference.shape
    result["diff"] = float((output - reference).abs().max()) if same else float("inf")
    result["scale"] = float(reference.abs().max())
    result["cache_diff"] = None
    text = pruned.config.get_text_config(decoder=True)
    if not getattr(text, "use_bidirectional_attention", False):  # PaliGemma's is a prefix LM
        cached = _cached_last_state(pruned, ids)
        result["cache_diff"] = float((cached - output[:, -1]).abs().max())
    result["prunec_imported"] = "prunec" in sys.modules
    result["seconds"] = time.perf_counter() - started
    return result


if __name__ == "__main__":
    if sys.argv[1] == "--light":
        light(sys.argv[2])
    else:
        with open(sys.argv[1]) as jobs:
            for checkpoint, payload_path, result_path in json.load(jobs):
                main(checkpoint, payload_path, result_path)
