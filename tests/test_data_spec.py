"""The data settings of a `domain` in the language: lowering, checks, warnings and formatting."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunec.errors import SpecError
from prunec.plan.model import FieldNames, HubDataset
from prunec.syntax import check_file, format_text, parse

SPEC = """\
model "org/m"
domain charts {
  data "hf://datasets/HuggingFaceM4/ChartQA@refs/convert/parquet"
  split "train[:80%]"
  eval "hf://datasets/HuggingFaceM4/ChartQA"
  eval_split "train[80%:]+test"
  config "default"
  fields text "query", answer "label"
}
domain local { data "folder" split "validation" fields image "picture" }
prune { budget 1 layer }
verify {
  charts >= 90%
  local >= 80% on "hf://datasets/org/local-eval"
}
"""


def test_data_settings_lower_into_the_plan(tmp_path: Path) -> None:
    plan = parse(SPEC, base_dir=tmp_path)
    charts, local = plan.domains
    assert charts.data == HubDataset(repo="HuggingFaceM4/ChartQA", revision="refs/convert/parquet")
    assert str(charts.data) == "hf://datasets/HuggingFaceM4/ChartQA@refs/convert/parquet"
    assert charts.eval == HubDataset(repo="HuggingFaceM4/ChartQA")
    assert (charts.split, charts.eval_split, charts.config) == (
        "train[:80%]",
        "train[80%:]+test",
        "default",
    )
    assert charts.fields == FieldNames(text="query", answer="label")
    assert charts.fields.name("image") == "image" and charts.fields.name("text") == "query"
    assert local.data == tmp_path / "folder" and local.split == "validation"
    assert local.fields == FieldNames(image="picture") and local.eval_split is None
    assert plan.verify.gates[1].data == HubDataset(repo="org/local-eval")
    assert plan.model_dump()["domains"][0]["data"] == {
        "repo": "HuggingFaceM4/ChartQA",
        "revision": "refs/convert/parquet",
    }


def test_format_is_canonical_and_keeps_meaning(tmp_path: Path) -> None:
    formatted = format_text(SPEC)
    assert '  fields     text "query", answer "label"\n' in formatted
    assert '  eval_split "train[80%:]+test"\n' in formatted
    assert format_text(formatted) == formatted
    assert (
        parse(formatted, base_dir=tmp_path).model_dump()
        == parse(SPEC, base_dir=tmp_path).model_dump()
    )


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ('fields text "q", text "r"', "`text` is mapped twice"),
        ('fields label "q"', "unknown record part `label`"),
        ('fields text ""', "an empty field name"),
        ('split "train]"', "is not a split"),
        ('split "train"', "`split` applies to folders and hub datasets"),
        ('eval "e.jsonl" eval_split "test"', "`eval_split` applies to folders"),
        ('config "x"', "`config` applies to folders"),
    ],
)
def test_invalid_data_settings_point_at_the_spec(setting: str, words: str) -> None:
    text = (
        f'model "o/m"\ndomain d {{\n  data "d.jsonl"\n  {setting}\n}}\nprune {{ budget 1 layer }}\n'
    )
    with pytest.raises(SpecError) as err:
        parse(text, "s.prune")
    (diag,) = err.value.diagnostics
    assert words in diag.message and diag.span is not None and diag.span.line == 4


def test_a_gate_on_a_hub_dataset_lets_eval_split_apply() -> None:
    text = (
        'model "o/m"\ndomain d { data "d.jsonl" eval_split "test" }\nprune { budget 1 layer }\n'
        'verify { d >= 90% on "hf://datasets/org/evals" }\n'
    )
    assert parse(text).domains[0].eval_split == "test"


@pytest.mark.parametrize(
    ("data", "guess"),
    [
        ("https://huggingface.co/datasets/org/name", "hf://datasets/org/name"),
        ("hf://org/name", "hf://datasets/org/name"),
        ("s3://bucket/data.parquet", None),
    ],
)
def test_urls_that_are_not_hub_datasets(data: str, guess: str | None) -> None:
    with pytest.raises(SpecError) as err:
        parse(f'model "o/m"\ndomain d {{ data "{data}" }}\nprune {{ budget 1 layer }}\n')
    (diag,) = err.value.diagnostics
    assert diag.code == "E242"
    assert (guess in (diag.help or "")) if guess else diag.help is None


def test_missing_data_warnings_know_folders_and_hub_ids(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    spec = tmp_path / "s.prune"
    spec.write_text(
        'model "o/m"\ndomain a { data "folder" }\ndomain b { data "hf://datasets/o/n" }\n'
        'domain c { data "org/name" }\nprune { budget 1 layer }\n'
    )
    result = check_file(spec)
    (warning,) = result.diagnostics
    assert warning.code == "W301" and "`org/name`" in warning.message
    assert warning.help == 'for the hub dataset `org/name`, write "hf://datasets/org/name"'
