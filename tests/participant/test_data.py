"""Loading local records: formats, validation errors, splits, scrubbing, demo data."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from fedmask.demo import data as demo_data
from fedmask.demo.data import PARTIES, generate_records, write_records
from fedmask.participant.data import (
    DEFAULT_HELDOUT_FRACTION,
    DataError,
    load_local_data,
    load_records,
    split_records,
)
from fedmask.participant.pii import empty_counts


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_jsonl_and_csv_give_the_same_records(tmp_path: Path) -> None:
    rows = [{"text": "first, with a comma", "label": 1}, {"text": 'second "quoted"', "label": 0}]
    jsonl = write_jsonl(tmp_path / "r.jsonl", rows)
    csv_path = tmp_path / "r.csv"
    csv_path.write_text('text,label\n"first, with a comma",1\n"second ""quoted""",0\n')
    from_jsonl = load_records(jsonl)
    from_csv = load_records(csv_path)
    assert [(r.text, r.label) for r in from_jsonl] == [(r.text, r.label) for r in from_csv]
    assert [(r.text, r.label) for r in from_jsonl] == [("first, with a comma", 1), ('second "quoted"', 0)]


def test_causal_lm_needs_only_text(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": "hello there"}, {"text": "bye"}])
    records = load_records(path, task="causal_lm")
    assert [(r.text, r.label) for r in records] == [("hello there", None), ("bye", None)]
    with pytest.raises(DataError, match=r"r.jsonl:1: missing required field 'label'"):
        load_records(path, task="classification")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"label": 1}], r":1: missing required field 'text'"),
        ([{"text": "ok", "label": 0}, {"text": "  ", "label": 1}], r":2: 'text' is empty"),
        ([{"text": 5, "label": 1}], r":1: 'text' must be a string"),
        ([{"text": "a", "label": 2}], r":1: label 2 is out of range \[0, 2\)"),
        ([{"text": "a", "label": -1}], r":1: label -1 is out of range"),
        ([{"text": "a", "label": "yes"}], r":1: label must be an integer, got 'yes'"),
        ([{"text": "a", "label": True}], r":1: label must be an integer, got a boolean"),
        ([{"text": "a", "label": 1.5}], r":1: label must be an integer"),
        ([{"text": "a", "label": 1, "split": "test"}], r":1: 'split' must be one of"),
        (["just a string"], r":1: each line must be a JSON object"),
    ],
)
def test_jsonl_errors_name_the_line_and_field(tmp_path: Path, rows: list[object], message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_records(path)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load_records(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="not a file"):
        load_records(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no records"):
        load_records(empty)
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_records(tmp_path / "r.txt")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(DataError, match=r"broken.jsonl:2: not valid JSON"):
        load_records(broken)
    wrong_columns = tmp_path / "cols.csv"
    wrong_columns.write_text("message,label\nhello,1\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['text'\]"):
        load_records(wrong_columns)
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(DataError, match="no records"):
        load_records(header_only)
    with pytest.raises(DataError, match="label 3 is out of range"):
        bad_label = tmp_path / "l.csv"
        bad_label.write_text("text,label\nhello,3\n")
        load_records(bad_label)
    with pytest.raises(DataError, match="unknown task"):
        load_records(bad_label, task="regression")


def test_split_field_is_honoured_or_drawn_with_a_seed(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": i % 2, "split": "heldout" if i < 3 else "train"} for i in range(10)]
    data = load_local_data(write_jsonl(tmp_path / "s.jsonl", rows))
    assert [r.text for r in data.heldout] == ["t0", "t1", "t2"]
    assert len(data.train) == 7 and data.heldout_source == "file"

    unsplit = load_records(write_jsonl(tmp_path / "u.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(10)]))
    train, heldout, source = split_records(unsplit, heldout_fraction=0.3, seed=7)
    again = split_records(unsplit, heldout_fraction=0.3, seed=7)
    assert (train, heldout) == (again[0], again[1]) and len(heldout) == 3
    assert sorted(r.text for r in train + heldout) == sorted(r.text for r in unsplit)
    assert source == "random 0.3 (seed 7)"

    rows[5].pop("split")
    with pytest.raises(DataError, match="either all records carry one or none does"):
        load_local_data(write_jsonl(tmp_path / "mixed.jsonl", rows))
    all_heldout = [{"text": "a", "label": 0, "split": "heldout"}]
    with pytest.raises(DataError, match="no training records"):
        load_local_data(write_jsonl(tmp_path / "h.jsonl", all_heldout))


def test_a_heldout_fraction_asked_for_on_split_records_is_refused_not_ignored(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": i % 2, "split": "heldout" if i < 3 else "train"} for i in range(10)]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(DataError, match="held-out fraction of 0.5 was asked for, but the records carry their own"):
        load_local_data(path, heldout_fraction=0.5)
    unsplit = load_records(write_jsonl(tmp_path / "u.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(10)]))
    assert len(split_records(unsplit)[1]) == round(10 * DEFAULT_HELDOUT_FRACTION)


def test_scrubbing_is_on_by_default_and_counted(tmp_path: Path) -> None:
    rows = [
        {"text": "call 212-555-0142 or mail a@example.com", "label": 1, "split": "train"},
        {"text": "card 4111 1111 1111 1111", "label": 0, "split": "heldout"},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    data = load_local_data(path)
    assert data.pii_scrubbed
    assert data.pii_counts == empty_counts() | {"email": 1, "phone": 1, "card": 1}
    assert data.train[0].text == "call [PHONE] or mail [EMAIL]"
    assert data.heldout[0].text == "card [CARD]"
    raw = load_local_data(path, scrub_pii=False)
    assert not raw.pii_scrubbed and sum(raw.pii_counts.values()) == 0
    assert raw.train[0].text == rows[0]["text"]


def test_demo_data_is_deterministic_and_non_iid(tmp_path: Path) -> None:
    first = write_records(generate_records("bank", 300, seed=5), tmp_path / "a.jsonl")
    second = write_records(generate_records("bank", 300, seed=5), tmp_path / "b.jsonl")
    other_seed = generate_records("bank", 300, seed=6)
    assert first.read_bytes() == second.read_bytes()
    assert [r["text"] for r in other_seed] != [r["text"] for r in generate_records("bank", 300, seed=5)]

    urgent_share = {}
    vocabulary = {}
    for party in PARTIES:
        records = generate_records(party, 1000, seed=0)
        splits = Counter(r["split"] for r in records)
        assert splits == {"train": 800, "heldout": 200}
        urgent_share[party] = sum(r["label"] for r in records) / len(records)
        vocabulary[party] = {w for r in records for w in str(r["text"]).lower().split()}
        loaded = load_local_data(write_records(records, tmp_path / f"{party}.jsonl"))
        assert sum(loaded.pii_counts.values()) > 500
    # Different label mixes per party (non-IID), and vocabularies that differ.
    assert urgent_share["hospital-b"] < urgent_share["hospital-a"] < urgent_share["bank"]
    assert urgent_share["bank"] - urgent_share["hospital-b"] > 0.15
    overlap = len(vocabulary["hospital-a"] & vocabulary["bank"]) / len(vocabulary["hospital-a"])
    assert overlap < 0.5
    with pytest.raises(ValueError, match="unknown party"):
        generate_records("clinic", 10)


def _urgent_cues(party: str) -> tuple[str, ...]:
    style = demo_data._STYLES[party]
    return style.urgent + (demo_data._SHARED_MEDICAL_URGENT if party.startswith("hospital") else ())


@pytest.mark.parametrize("party", PARTIES)
def test_false_friends_borrow_another_party_s_urgent_words_and_are_routine(party: str) -> None:
    """What a single party's model gets wrong on the others' records: each false friend carries
    words that are an urgent cue at another party and at its own party never are."""
    others = [cue for other in PARTIES if other != party for cue in _urgent_cues(other)]
    for text, borrowed in demo_data._STYLES[party].false_friends:
        words = re.compile(rf"\b{re.escape(borrowed)}\b", re.IGNORECASE)
        assert words.search(text), (text, borrowed)
        assert any(words.search(cue) for cue in others), borrowed
        assert not any(words.search(cue) for cue in _urgent_cues(party)), borrowed
    # They occur, as routine records (label noise aside), in about a fifth of the routine ones.
    texts = {
        text.format(**demo_data._slots(random.Random(0)))[:20] for text, _ in demo_data._STYLES[party].false_friends
    }
    records = generate_records(party, 2000, seed=1, label_noise=0.0)
    routine = [r for r in records if r["label"] == 0]
    carrying = [r for r in records if any(prefix.lower() in str(r["text"]).lower() for prefix in texts)]
    assert carrying and all(r["label"] == 0 for r in carrying)
    assert 0.15 < len(carrying) / len(routine) < 0.35


def test_generated_records_read_back_the_same_from_csv_and_jsonl(tmp_path: Path) -> None:
    records = generate_records("hospital-b", 60, seed=2)  # commas, quotes and CJK text in the notes
    from_jsonl = load_local_data(write_records(records, tmp_path / "r.jsonl"), scrub_pii=False)
    from_csv = load_local_data(write_records(records, tmp_path / "r.csv"), scrub_pii=False)
    assert [(r.text, r.label) for r in from_csv.train] == [(r.text, r.label) for r in from_jsonl.train]
    assert [(r.text, r.label) for r in from_csv.heldout] == [(r.text, r.label) for r in from_jsonl.heldout]
    with pytest.raises(ValueError, match=r"\.jsonl or \.csv"):
        write_records(records, tmp_path / "r.txt")
    assert not (tmp_path / "r.txt").exists()
