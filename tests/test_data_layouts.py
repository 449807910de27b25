"""Reading each data layout, and each way a data file can be wrong (file:line or row named)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from data_layouts import serve, write_images

from prunec.data import ImageBytes, ImageURL, choose, read_records, records_digest
from prunec.data.images import DataUnavailable, open_rgb
from prunec.data.layouts import PENDING
from prunec.data.tables import load_table
from prunec.errors import SpecError
from prunec.plan.model import FieldNames


def lines(path: Path, rows: list, end: str = "\n") -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + end for r in rows))
    return path


def problems(source, **kwargs) -> list:
    with pytest.raises(SpecError) as err:
        read_records(source, **kwargs)
    return list(err.value.diagnostics)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    write_images(tmp_path)
    return tmp_path


# ------------------------------------------------------------------ JSON and JSON Lines


def test_json_array_keeps_the_line_of_each_record(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "a"},\n\n  {"text": "b",\n   "answer": "c"}\n]\n')
    records = read_records(path)
    assert [(r.line, r.text, r.answer) for r in records] == [(2, "a", None), (4, "b", "c")]
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"} {"text": "c"}\n]')
    (diag,) = problems(path)
    assert (diag.code, diag.span.line) == ("E323", 3) and "array" in diag.help


def test_line_separators_inside_strings_do_not_split_records(tmp_path):
    path = lines(tmp_path / "d.jsonl", ['{"text": "a\u2028b\u0085c"}', {"text": "next"}])
    assert [(r.line, r.text) for r in read_records(path)] == [(1, "a\u2028b\u0085c"), (2, "next")]


def test_not_utf8_names_line_and_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    (diag,) = problems(path)
    assert diag.code == "E320" and (diag.span.line, diag.span.col) == (2, 14)


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"PAR1\x15\x04\x15\x10\x15\x14L\x15", "Parquet"),
        (b"text,image,answer\nhow many,img/1.png,2\n", "CSV"),
        (b"text\timage\nhow many\timg/1.png\n", "TSV"),
        ('\ufeff[{"text": 1}'.encode("utf-16"), "UTF-16"),
        (b'{\n  "data": [{"text": "a"}, {"text": "b"}]\n}\n', "`data` holds 2 records"),
        (b"\x1f\x8b\x08\x00", "gzip"),
    ],
)
def test_a_file_in_another_format_gets_a_hint(tmp_path, content, hint):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    found = problems(path)
    assert found and all(hint in (d.help or "") for d in found if d.code != "E339"), found
    assert all(d.span is not None and d.span.file == str(path) for d in found)


def test_errors_are_capped_with_a_count_of_the_rest(tmp_path):
    from prunec.data import MAX_SHOWN

    path = lines(tmp_path / "d.jsonl", [{"txt": "typo", "text": ""}] * 2000)
    found = problems(path)
    assert len(found) == MAX_SHOWN + 1
    assert [d.span.line for d in found[:MAX_SHOWN]] == list(range(1, MAX_SHOWN + 1))
    summary = found[-1]
    assert summary.code == "E339" and summary.count == 2000 - MAX_SHOWN
    assert f"and {2000 - MAX_SHOWN} more problems in {path}" in summary.message
    with pytest.raises(SpecError) as err:
        read_records(path)
    rendered = err.value.render()
    assert rendered.endswith("error: 2000 problems found") and len(rendered) < 5000


def test_missing_text_field_everywhere_is_one_error_with_the_fields_found(tmp_path):
    path = lines(tmp_path / "d.jsonl", [{"question": f"q{i}", "label": "a"} for i in range(50)])
    (diag,) = problems(path)
    assert diag.code == "E337" and "`label`, `question`" in diag.message
    assert 'fields text "..."' in diag.help
    records = read_records(path, fields=FieldNames(text="question", answer="label"))
    assert (records[0].text, records[0].answer) == ("q0", "a")
    # Evaluation data needs its answers: a mapped answer field that no record has is one error.
    (diag,) = problems(path, fields=FieldNames(text="question", answer="lbl"), require_answer=True)
    assert diag.code == "E337" and "`lbl` (named by `fields answer`)" in diag.message


def test_integer_answers_are_text_other_types_are_errors(tmp_path):
    path = lines(tmp_path / "d.jsonl", [{"text": "a", "answer": 3}])
    assert read_records(path)[0].answer == "3"
    path = lines(tmp_path / "d.jsonl", [{"text": "a", "answer": True}, {"text": "b", "image": 4}])
    assert [(d.code, d.span.line) for d in problems(path)] == [("E327", 1), ("E327", 2)]


# ------------------------------------------------------------------ conversations


def test_llava_conversation_turns_roles_and_placeholder(images):
    row = {
        "id": "x",
        "image": "img/a.png",
        "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "what is this"},
            {"from": "gpt", "value": "a picture"},
            {"from": "human", "value": "how many dots\n<image>"},
        ],
    }
    (record,) = read_records(lines(images / "d.jsonl", [row]))
    assert (record.text, record.answer) == ("how many dots", None)
    assert [(t.role, t.image) for t in record.history] == [
        ("system", False),
        ("user", False),
        ("assistant", False),
    ]
    assert record.image == (images / "img" / "a.png").resolve() and not record.image_in_history


@pytest.mark.parametrize(
    ("row", "code", "words"),
    [
        ({"conversations": [{"from": "bot", "value": "hi"}]}, "E333", "unknown \"from\" 'bot'"),
        ({"conversations": []}, "E333", "non-empty list"),
        ({"conversations": [{"from": "human", "value": "<image> a"}]}, "E333", "has none"),
        (
            {"image": "img/a.png", "conversations": [{"from": "human", "value": "<image><image>"}]},
            "E334",
            "2 `<image>` placeholders",
        ),
        ({"conversations": [{"from": "gpt", "value": "only an answer"}]}, "E333", "no user turn"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "E333", "unknown role 'robot'"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video", "path": "v.mp4"}]}]},
            "E333",
            "content part of type `video`",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "path": "img/a.png"},
                            {"type": "image", "url": "https://x/b.png"},
                            {"type": "text", "text": "compare"},
                        ],
                    }
                ]
            },
            "E334",
            "2 images",
        ),
        ({"messages": [{"role": "user", "content": 7}]}, "E333", "a string or a list"),
    ],
)
def test_malformed_conversations_name_the_line(images, row, code, words):
    rows = [row, row] if "conversations" in row else [row]
    path = lines(images / "d.jsonl", rows)
    found = problems(path)
    assert [(d.code, d.span.line) for d in found] == [(code, i + 1) for i in range(len(rows))]
    assert words in found[0].message, found[0].message


def test_chat_messages_images_by_path_url_data_uri_and_images_column(images):
    data_uri = (
        "data:image/png;base64,"
        + base64.b64encode((images / "img" / "b.png").read_bytes()).decode()
    )
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "image", "url": "https://h/x.png"}, {"type": "text", "text": "a"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "image": data_uri}, {"type": "text", "text": "b"}]}]},
        {"images": ["img/a.png"], "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "c"}]}]},
        {"images": ["img/a.png"], "messages": [{"role": "user", "content": "d"}]},
    ]  # fmt: skip
    second, third, fourth = read_records(lines(images / "d.jsonl", rows[1:]))
    assert isinstance(second.image, ImageBytes)
    assert open_rgb(second.image).tobytes() == open_rgb(images / "img" / "b.png").tobytes()
    assert third.image == fourth.image == (images / "img" / "a.png").resolve()
    # A URL is kept as a URL (never turned into a local path); offline it cannot be checked.
    from prunec.data.layouts import Origin, detect_layout, to_record

    at = Origin(images / "d.jsonl", 1, "line", images)
    record = to_record(rows[0], detect_layout(rows[0], None), FieldNames(), at)
    assert record.image == ImageURL("https://h/x.png")


# ------------------------------------------------------------------ images


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), (200, 10, 10)).save(tmp_path / "p.jpg", exif=exif)
    assert open_rgb(tmp_path / "p.jpg").size == (20, 40)


def test_image_urls_download_once_then_work_offline(images, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEC_CACHE_DIR", str(tmp_path / "cache"))
    with serve(images) as url:
        path = lines(images / "u.jsonl", [{"image": f"{url}/img/a.png", "text": "a"}])
        (record,) = read_records(path)
        missing = lines(images / "m.jsonl", [{"image": f"{url}/img/nope.png", "text": "a"}])
        (diag,) = problems(missing)
    assert record.image == ImageURL(f"{url}/img/a.png")
    assert diag.code == "E335" and "HTTP 404" in diag.message and diag.span.line == 1
    assert len(list((tmp_path / "cache" / "images").iterdir())) == 1
    # The server is gone: the cached download serves the URL from now on.
    assert open_rgb(record.image).tobytes() == open_rgb(images / "img" / "a.png").tobytes()
    assert read_records(path) == [record]


def test_an_unreachable_image_url_fails_at_once_naming_line_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [{"text": "a"}] + [
        {"image": f"https://images.example/{i}.png", "text": "b"} for i in range(3)
    ]
    path = lines(tmp_path / "d.jsonl", rows)
    started = time.perf_counter()
    with pytest.raises(DataUnavailable) as err:
        read_records(path)
    assert time.perf_counter() - started < 5
    message = str(err.value)
    assert f"{path}:2: cannot download image https://images.example/0.png" in message
    assert "2 more records name image URLs" in message and err.value.exit_code == 3


def test_missing_and_unreadable_images_of_chosen_records(images):
    (images / "img" / "broken.png").write_bytes(b"not a png")
    rows = [{"text": "a", "image": "img/nope.png"}, {"text": "b", "image": "img/broken.png"}]
    found = problems(lines(images / "d.jsonl", rows))
    assert [(d.code, d.span.line) for d in found] == [("E328", 1), ("E329", 2)]
    # `check_all` (check --deep) also checks records that `samples` does not choose.
    ok = lines(images / "e.jsonl", [{"text": "a", "image": "img/a.png"}, *rows])
    seed = next(s for s in range(100) if choose(3, 1, s) == [0])  # picks the good record
    assert [r.line for r in read_records(ok, samples=1, seed=seed)] == [1]
    assert len(problems(ok, samples=1, seed=seed, check_all=True)) == 2


def test_evaluation_data_needs_answers(tmp_path):
    path = lines(tmp_path / "d.jsonl", [{"text": "a", "answer": "b"}, {"text": "c"}])
    assert [(d.code, d.span.line) for d in problems(path, require_answer=True)] == [("E338", 2)]


# ------------------------------------------------------------------ tables


def _parquet(path: Path, rows: list[dict], features=None) -> Path:
    from datasets import Dataset

    Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def test_parquet_images_are_decoded_from_memory_and_rows_picked_by_index(images, monkeypatch):
    from datasets import Features, Image, Value

    from prunec.data import tables

    png = (images / "img" / "a.png").read_bytes()
    rows = [{"text": f"w{i}", "image": {"bytes": png, "path": None}} for i in range(40)]
    path = _parquet(
        images / "d.parquet", rows, Features({"text": Value("string"), "image": Image()})
    )
    table = load_table(path, None, None)
    light = list(table.light_rows())
    assert len(light) == 40 and all(row["image"] is PENDING for row in light)
    asked: list[list[int]] = []
    original = tables.Table.rows
    monkeypatch.setattr(
        tables.Table, "rows", lambda self, i: asked.append(list(i)) or original(self, i)
    )
    records = read_records(path, samples=4, seed=3)
    assert asked == [[r.line for r in records]] and len(asked[0]) == 4
    assert all(isinstance(r.image, ImageBytes) and r.unit == "row" for r in records)
    assert len(set(records)) == 4  # records are dict keys of evaluation caches
    assert records[0].where == f"{path} row {records[0].line}"


def test_table_problems_name_the_row(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("text,answer\nfine,NA\n,no text\nok,\n")
    found = problems(csv)
    assert [d.code for d in found] == ["E326"] and f"{csv} row 1:" in found[0].message
    csv.write_text("text,answer\nfine,NA\nok,\n")
    assert [r.answer for r in read_records(csv)] == ["NA", None]  # only an empty cell is missing
    (diag,) = problems(tmp_path / "nope.parquet")
    assert diag.code == "E320"
    bad = tmp_path / "bad.parquet"
    bad.write_text('{"text": "a"}\n')
    (diag,) = problems(bad)
    assert diag.code == "E336" and str(bad) in diag.message and ".jsonl" in diag.help
    (diag,) = problems(_parquet(tmp_path / "q.parquet", [{"question": "a"}]))
    assert diag.code == "E337" and "`question`" in diag.message


def test_folder_splits_and_configs(tmp_path):
    folder = tmp_path / "ds"
    (folder / "data").mkdir(parents=True)
    _parquet(folder / "data" / "train-0.parquet", [{"text": "a"}, {"text": "b"}])
    _parquet(folder / "data" / "test-0.parquet", [{"text": "c"}])
    assert [r.text for r in read_records(folder)] == ["a", "b"]
    assert [r.text for r in read_records(folder, split="test")] == ["c"]
    assert [r.text for r in read_records(folder, split="train[1:]+test")] == ["b", "c"]
    record = read_records(folder, split="test")[0]
    assert record.where == f"{folder} (split test) row 0"
    (diag,) = problems(folder, split="validation")
    assert diag.code == "E336" and "Unknown split" in diag.message
    other = tmp_path / "cfg"
    (other / "small").mkdir(parents=True)
    _parquet(other / "small" / "train.parquet", [{"text": "small"}])
    (other / "README.md").write_text(
        "---\nconfigs:\n- config_name: small\n  data_files:\n  - split: train\n"
        "    path: small/*.parquet\n---\n"
    )
    assert [r.text for r in read_records(other, config="small")] == ["small"]
    (diag,) = problems(other, config="large")
    assert diag.code == "E336" and "large" in diag.message


def test_hub_dataset_offline_fails_in_seconds_with_one_line(tmp_path):
    started = time.perf_counter()
    with pytest.raises(DataUnavailable) as err:
        read_records("hf://datasets/prunec-tests/no-such-dataset", split="test")
    assert time.perf_counter() - started < 15
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 3
    assert "hf://datasets/prunec-tests/no-such-dataset" in message and "local cache" in message


# ------------------------------------------------------------------ fingerprints


def test_content_digest_follows_content_not_layout(images):
    def digest(rows: list[dict], name: str = "d.jsonl") -> str:
        return records_digest(read_records(lines(images / name, rows)), _sha)

    base = [{"text": "a", "image": "img/a.png", "answer": "x"}, {"text": "b"}]
    same = [{"id": 1, **base[0]}, {"text": "b", "source": "y"}]
    assert digest(base) == digest(same, "e.jsonl")
    assert digest(base) != digest([base[0], {"text": "b", "answer": "z"}])
    (images / "img" / "a2.png").write_bytes((images / "img" / "b.png").read_bytes())
    assert digest(base) != digest([{**base[0], "image": "img/a2.png"}, base[1]])


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_keeps_the_layout_of_its_first_record(images):
    rows = [{"messages": [{"role": "user", "content": "a"}]}, {"text": "b"}]
    (diag,) = problems(lines(images / "d.jsonl", rows))
    assert (diag.code, diag.span.line) == ("E333", 2) and "read as chat records" in diag.message
