"""Calibration and evaluation data: every supported layout in, `Record`s out, encoded for a model.

Layouts (see docs/language.md, "Data files"): JSON Lines or a JSON array of flat records
`{"image", "text", "answer"}` (other fields ignored; `fields` in a domain renames the three),
LLaVA `conversations` and chat `messages` records, Parquet / CSV / TSV files, folders of data
files and hub datasets (through Hugging Face `datasets`). Images are local paths (relative to
the data file), http(s) URLs (downloaded once, cached) or embedded bytes.

    read_records(source, samples, seed, fields=..., split=..., config=...) -> list[Record]
    read_calibration(domain) / read_evaluation(domain, source)   the same, for a plan's domain
    encode(processor, records, max_length, with_answer)          a padded batch for forward
    prompt_inputs(processor, record, max_length)                 one prompt for generation
    image_token_ids(processor)                                   ids of image placeholder tokens
    load_image(record)                                           the image, upright RGB

Every problem in a source is reported at once, as a SpecError whose diagnostics name
`file:line` (JSON) or `file row N` (tables), before any model work starts; long lists show
the first few and a count.
"""

from __future__ import annotations

from prunec.data.encode import encode, image_token_ids, load_image, prompt_inputs
from prunec.data.reader import (
    MAX_SHOWN,
    choose,
    read_calibration,
    read_evaluation,
    read_records,
    records_digest,
)
from prunec.data.record import ImageBytes, ImageRef, ImageURL, Record, Turn

__all__ = [
    "MAX_SHOWN",
    "ImageBytes",
    "ImageRef",
    "ImageURL",
    "Record",
    "Turn",
    "choose",
    "encode",
    "image_token_ids",
    "load_image",
    "prompt_inputs",
    "read_calibration",
    "read_evaluation",
    "read_records",
    "records_digest",
]
