"""Preference-pair loading (trainer.data.formats): every input format and file type, every bad-input
case, and the real samples in ../shared/data (skipped when absent)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from trainer.data.formats import DataError, detect_format, load_pairs, pair_id

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

ALPACA = [
    {"instruction": "Add 2 and 2.", "input": "", "output_1": "5", "output_2": "4", "preference": 2},
    {"instruction": "Translate.", "input": "Hallo", "output_1": "Hello", "output_2": "Bye", "preference": 1},
]
HH = [
    {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine, thanks.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant:  Go away.",
    }
]
GENERIC = [{"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}]


def write(path: Path, records, kind: str | None = None) -> Path:
    kind = kind or "".join(path.suffixes)
    if kind == ".json":
        path.write_text(json.dumps(records))
    elif kind == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif kind in (".jsonl.gz", ".json.gz"):
        with gzip.open(path, "wt") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
    elif kind == ".parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


# 1. formats
def test_alpaca_format(tmp_path):
    res = load_pairs(write(tmp_path / "a.json", ALPACA))
    assert res.format == "alpaca" and res.total == 2 and not res.invalid
    p0, p1 = res.pairs
    assert (p0.prompt, p0.chosen, p0.rejected) == ("Add 2 and 2.", "4", "5")
    assert (p1.prompt, p1.chosen, p1.rejected) == ("Translate.\n\nHallo", "Hello", "Bye")
    assert p0.source.endswith("a.json:record 1")


def test_alpaca_input_may_be_absent_and_preference_float(tmp_path):
    rec = {"instruction": "Say hi.", "output_1": "hi", "output_2": "no", "preference": 1.0}
    (pair,) = load_pairs(write(tmp_path / "a.jsonl", [rec])).pairs
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Say hi.", "hi", "no")


def test_hh_format_splits_last_assistant_turn(tmp_path):
    (pair,) = load_pairs(write(tmp_path / "h.jsonl", HH)).pairs
    assert pair.prompt == "Human: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant:"
    assert (pair.chosen, pair.rejected) == ("Fine, thanks.", "Go away.")


def test_generic_jsonl_and_explicit_format(tmp_path):
    res = load_pairs(write(tmp_path / "g.jsonl", GENERIC), fmt="jsonl")
    (pair,) = res.pairs
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Name a colour.", "Blue.", "Seven.")
    # The same record read as HH has no "Assistant:" turn: a clear error, not a silent mix-up.
    with pytest.raises(DataError, match="'chosen'"):
        load_pairs(tmp_path / "g.jsonl", fmt="hh")


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet"])
def test_file_types_give_the_same_pairs(tmp_path, suffix):
    ref = load_pairs(write(tmp_path / "ref.jsonl", ALPACA)).pairs
    got = load_pairs(write(tmp_path / f"x{suffix}", ALPACA)).pairs
    assert [(p.id, p.prompt, p.chosen, p.rejected) for p in got] == [
        (p.id, p.prompt, p.chosen, p.rejected) for p in ref
    ]


def test_ids_are_stable_and_explicit_ids_kept(tmp_path):
    a = load_pairs(write(tmp_path / "a.jsonl", GENERIC)).pairs[0].id
    b = load_pairs(write(tmp_path / "b.json", GENERIC)).pairs[0].id
    assert a == b == pair_id("Name a colour.", "Blue.", "Seven.")
    assert len(a) == 16
    assert pair_id("a", "bc", "d") != pair_id("ab", "c", "d")  # length-prefixed, no ambiguity
    rec = dict(GENERIC[0], id=42)
    assert load_pairs(write(tmp_path / "c.jsonl", [rec])).pairs[0].id == "42"


def test_exact_duplicates_dropped_and_counted(tmp_path):
    res = load_pairs(write(tmp_path / "d.jsonl", GENERIC * 3))
    assert len(res.pairs) == 1 and res.duplicates == 2 and res.total == 3


def test_detect_format():
    assert detect_format(ALPACA[0]) == "alpaca"
    assert detect_format(HH[0]) == "hh"
    assert detect_format(GENERIC[0]) == "jsonl"
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format({"question": "?"})


# 2. bad input: each case names the file, the record and the field
BAD_CASES = [
    (
        "missing field",
        [ALPACA[0], {k: v for k, v in ALPACA[1].items() if k != "output_2"}],
        ["record 2", "'output_2'", "missing"],
    ),
    ("wrong type", [ALPACA[0], dict(ALPACA[1], output_1=["Hello"])], ["record 2", "'output_1'", "list"]),
    ("bad preference", [dict(ALPACA[0], preference=3)], ["record 1", "'preference'", "1 or 2"]),
    ("string preference", [dict(ALPACA[0], preference="2")], ["record 1", "'preference'", "str"]),
    (
        "missing preference",
        [{k: v for k, v in ALPACA[0].items() if k != "preference"}],
        ["record 1", "'preference'", "missing"],
    ),
    ("not an object", [ALPACA[0], ["a", "list"]], ["record 2", "JSON object"]),
    ("empty response", [dict(GENERIC[0], rejected="  ")], ["record 1", "'rejected'", "empty"]),
    (
        "HH prompts differ",
        [dict(HH[0], rejected="\n\nHuman: Other\n\nAssistant: x")],
        ["record 1", "'rejected'", "differs"],
    ),
    ("bad id type", [dict(GENERIC[0], id=[1])], ["record 1", "'id'"]),
    ("id clash", [dict(GENERIC[0], id="a"), dict(GENERIC[0], id="a", chosen="Red.")], ["record 2", "'id'"]),
]


@pytest.mark.parametrize("name,records,needles", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_records(tmp_path, name, records, needles):
    path = write(tmp_path / "bad.json", records)
    with pytest.raises(DataError) as info:
        load_pairs(path)
    msg = str(info.value)
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    # --skip-invalid: the bad record is counted, the good ones kept.
    res = load_pairs(path, skip_invalid=True)
    assert len(res.invalid) == 1 and len(res.pairs) == len(records) - 1


def test_bad_json_line_is_skippable(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(GENERIC[0]) + "\n{not json\n\n" + json.dumps(dict(GENERIC[0], id="b")) + "\n")
    with pytest.raises(DataError, match=r"x\.jsonl: line 2: not valid JSON"):
        load_pairs(path)
    res = load_pairs(path, skip_invalid=True)
    assert [p.id for p in res.pairs][1] == "b" and len(res.invalid) == 1


@pytest.mark.parametrize(
    "setup,needle",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_text("{broken"), "not valid JSON"),
        (lambda p: p.write_text('{"a": 1}'), "expected a JSON list"),
        (lambda p: p.write_text(""), "not valid JSON"),
        (lambda p: p.write_text("[]"), "no records"),
    ],
    ids=["missing", "broken", "not-a-list", "empty", "no-records"],
)
def test_unreadable_json_files(tmp_path, setup, needle):
    path = tmp_path / "in.json"
    setup(path)
    with pytest.raises(DataError, match=needle) as info:
        load_pairs(path, skip_invalid=True)  # whole-file errors are never skipped
    assert str(path) in str(info.value)


def test_unreadable_other_files(tmp_path):
    gz = tmp_path / "x.jsonl.gz"
    gz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="unreadable file"):
        load_pairs(gz)
    pq = tmp_path / "x.parquet"
    pq.write_bytes(b"PAR1 nonsense")
    with pytest.raises(DataError, match="unreadable parquet"):
        load_pairs(pq)
    bad_utf8 = tmp_path / "x.jsonl"
    bad_utf8.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match="line 1: not valid UTF-8"):  # a bad line, named
        load_pairs(bad_utf8)
    csv = tmp_path / "x.csv"
    csv.write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match="unknown file type"):
        load_pairs(csv)
    with pytest.raises(DataError, match="is a directory"):
        load_pairs(tmp_path)
    with pytest.raises(DataError, match="cannot tell the format"):
        load_pairs(write(tmp_path / "q.jsonl", [{"question": "?"}]))


def test_hf_dataset_name_offline(monkeypatch):
    """A name that is not a local file goes to `datasets`; failure is a DataError naming it."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []

    def fake_load(name, split):
        calls.append((name, split))
        if name == "someone/prefs":
            return datasets.Dataset.from_list(GENERIC)
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    res = load_pairs("someone/prefs", split="test")
    assert calls == [("someone/prefs", "test")] and res.pairs[0].chosen == "Blue."
    with pytest.raises(DataError, match="someone/missing: not a local file"):
        load_pairs("someone/missing")


# 3. the real samples
def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data absent: {path}")
    return path


def test_real_hh_rlhf():
    path = _need(SHARED_DATA / "hh_rlhf" / "harmless-base_test.jsonl.gz")
    # 5 of the 2312 test pairs have dialogues that differ before the last Assistant turn.
    with pytest.raises(DataError, match=r"line \d+: field 'rejected': the dialogue before"):
        load_pairs(path)
    res = load_pairs(path, skip_invalid=True)
    assert res.format == "hh" and res.total == 2312
    assert len(res.invalid) == 5 and len(res.pairs) + res.duplicates == 2307
    for p in res.pairs[:200]:
        assert p.prompt.startswith("Human:") and p.prompt.endswith("Assistant:")
        assert "\n\nAssistant:" not in p.rejected and p.rejected == p.rejected.strip()


def test_real_alpaca_farm(tmp_path):
    path = _need(SHARED_DATA / "alpaca_farm" / "outputs_pairs.json")
    # The public sample has no human preference labels: a clear error naming the field.
    with pytest.raises(DataError, match=r"record 1: field 'preference': missing"):
        load_pairs(path)
    records = json.loads(path.read_text())
    labelled = write(
        tmp_path / "labelled.json", [dict(r, preference=1 + k % 2) for k, r in enumerate(records)]
    )
    res = load_pairs(labelled)
    assert res.format == "alpaca" and len(res.pairs) == len(records)
    assert res.pairs[0].rejected == records[0]["output_2"] and res.pairs[1].rejected == records[1]["output_1"]


def test_edit_record_is_one_schema_and_names_bad_fields():
    """EditRecord: what `fgrlhf edit` and the synthetic world write is what the trainer parses."""
    from trainer.data.formats import EditRecord
    from trainer.data.synthetic import SyntheticConfig, generate

    rec = generate(SyntheticConfig(n_pairs=2))[0]
    back = EditRecord.from_json(rec, "f.jsonl", "line 1")
    assert back.to_json() == rec and back.gold is not None
    with pytest.raises(DataError, match=r"f.jsonl: line 3: field 'edited': expected a string, got int 123"):
        EditRecord.from_json({**rec, "edited": 123}, "f.jsonl", "line 3")
    with pytest.raises(DataError, match=r"line 4: field 'prompt': missing"):
        EditRecord.from_json({"original": "x"}, "f.jsonl", "line 4")
    with pytest.raises(DataError, match="unknown status 'maybe'"):
        EditRecord.from_json({**rec, "status": "maybe"}, "f.jsonl", "line 5")


def test_one_alpaca_prompt_rule_for_training_and_ppo_prompts(tmp_path):
    """A whitespace-only `input` renders the same prompt in preference data and in PPO prompts."""
    from trainer.data.formats import prompt_parts

    def prompt_text(rec, src, where):  # the joined text, as the editor and plain templates see it
        return prompt_parts(rec, src, where).text

    rec = {
        "instruction": "Name a colour.",
        "input": "   ",
        "output_1": "Red.",
        "output_2": "Uh",
        "preference": 1,
    }
    path = tmp_path / "a.json"
    path.write_text(json.dumps([rec]))
    train_prompt = load_pairs(path).pairs[0].prompt
    assert train_prompt == "Name a colour." == prompt_text(rec, "a.json", "record 1")
    with_input = {**rec, "input": "Pick one."}
    assert prompt_text(with_input, "a.json", "record 1") == "Name a colour.\n\nPick one."
    with pytest.raises(DataError, match="record 2: no 'prompt'"):
        prompt_text({"text": "x"}, "a.json", "record 2")


def test_a_bad_byte_is_a_bad_line_not_a_bad_file(tmp_path):
    """One non-UTF-8 byte: that line is named (and skipped, counted, under skip_invalid)."""
    path = tmp_path / "p.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode()
    bad = b'{"prompt": "p\xff", "chosen": "a", "rejected": "c"}'
    path.write_bytes(good + b"\n" + bad + b"\n" + good.replace(b'"b"', b'"d"') + b"\n")
    with pytest.raises(DataError, match=r"p.jsonl: line 2: not valid UTF-8 \(byte 14 of the line\)"):
        load_pairs(path)
    res = load_pairs(path, skip_invalid=True)
    assert len(res.pairs) == 2 and len(res.invalid) == 1 and res.invalid[0].where == "line 2"


def test_alpaca_instruction_and_input_travel_to_the_edit_record(tmp_path):
    from trainer.data.formats import EditRecord, Prompt

    rec = {"instruction": "Sum.", "input": "2 3", "output_1": "5", "output_2": "6", "preference": 1}
    path = tmp_path / "a.json"
    path.write_text(json.dumps([rec]))
    pair = load_pairs(path).pairs[0]
    assert (pair.prompt, pair.instruction, pair.input) == ("Sum.\n\n2 3", "Sum.", "2 3")
    er = EditRecord(
        id=pair.id, prompt=pair.prompt, original="6", instruction=pair.instruction, input=pair.input
    )
    back = EditRecord.from_json(er.to_json(), "e.jsonl", "line 1")
    assert back.prompt_parts == Prompt("Sum.", "2 3")
    plain = EditRecord.from_json({"id": "x", "prompt": "Hi", "original": "o"}, "e.jsonl", "line 2")
    assert plain.prompt_parts == Prompt("Hi") and "input" not in plain.to_json()


def test_valid_records_raises_or_skips_and_counts(tmp_path):
    """The one bad-record policy: raise the error naming file, record and field, or (skip_invalid)
    hand it to on_invalid and go on; parse returning None leaves a record out, not invalid."""
    from trainer.data.formats import read_records, valid_records

    path = tmp_path / "r.jsonl"
    lines = [{"n": 1}, "{oops", {"n": "two"}, {"n": 3}, {"n": 0}]
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in lines))

    def parse(where, rec):
        if not isinstance(rec["n"], int):
            raise DataError(path, "expected an int", where, "n")
        return rec["n"] or None  # 0: left out, not invalid

    with pytest.raises(DataError, match=r"r\.jsonl: line 2: not valid JSON"):
        list(valid_records(read_records(path), parse))
    first = valid_records(read_records(path), parse)
    assert next(first) == ("line 1", 1)  # lazy: good records come before the bad one raises
    with pytest.raises(DataError, match=r"r\.jsonl: line 3: field 'n': expected an int"):
        list(valid_records([("line 3", {"n": "two"})], parse))
    bad: list[DataError] = []
    kept = list(valid_records(read_records(path), parse, skip_invalid=True, on_invalid=bad.append))
    assert kept == [("line 1", 1), ("line 4", 3)]
    assert [(e.where, e.field) for e in bad] == [("line 2", None), ("line 3", "n")]
    assert list(valid_records(read_records(path), parse, skip_invalid=True)) == kept  # no on_invalid
    gen = valid_records(read_records(tmp_path / "missing.jsonl"), parse, skip_invalid=True)
    with pytest.raises(DataError, match="no such file"):  # an unreadable file raises, always
        next(gen)
