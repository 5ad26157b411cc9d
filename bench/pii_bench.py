"""``fedmask bench pii``: recall per PII type and overall precision of the scrubber on labelled
cases, next to Presidio's pattern recognizers run on the same cases in the same process.

The cases are ``bench/pii_cases.jsonl``: English and Chinese clinical notes, bank messages
and look-alikes (doses, lab values, visit dates, ICD-10 codes, eponyms, ...), one JSON object a
line with ``text`` and ``spans`` (``start``, ``end``, ``type``, ``text``); a look-alike has no
spans and must come through unchanged.

``bench/pii_cases_heldout.jsonl`` is a second, held-out set in the same format: written
with the last two batches of development cases, before either was run, and split off at random
per category; the detectors were tuned on the development half only, never on a miss of the
held-out half. Its figures, printed in their own table, are the fairer estimate of what the
scrubber does on text it has not seen; the targets are asserted on the development set only.

Scoring is span-level:

- recall: an expected span counts as found when the detections *of its type* together cover every
  letter and digit in it. A detection that covers only part of it (``6212 2602 [PHONE]``, a name
  without its surname) does not find it; one that reaches beyond it (``家住[ADDRESS]`` taking
  "家住" too) does.
- precision: a detection counts as correct when it overlaps an expected span of its own type,
  partly or wholly; any other detection (on a look-alike, or of the wrong type) is a false
  positive. Precision is correct detections over all detections, all types together.

Presidio (``presidio_analyzer``, the optional extra ``pii-bench``) runs without an NLP engine and
so without NER: only its predefined pattern recognizers (e-mail, phone via ``phonenumbers`` with
the US, GB, CN, DE and FR regions, credit card, IBAN, US SSN, UK NINO, NHS, UK postcode, date).
Their entity types map onto ours (``DATE_TIME`` onto ``dob``: Presidio cannot tell a birth date
from a visit date; ``UK_POSTCODE`` onto ``address``); it has none for names, addresses or MRNs.
Overlapping results are resolved as Presidio's anonymizer does: the higher score, then the longer
span, wins. Its e-mail validation looks the domain up in tldextract's bundled suffix list (the
download of a fresh list is switched off: the benchmark needs no network).
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import click

from fedmask.participant.pii import PII_TYPES, find_pii

CASES_PATH = Path(__file__).parent / "pii_cases.jsonl"
HELDOUT_PATH = Path(__file__).parent / "pii_cases_heldout.jsonl"
STRUCTURED_TYPES = ("email", "phone", "national_id", "card", "iban", "mrn", "dob")
# The types both tools look for (Presidio's pattern recognizers have no MRN, name or street address,
# and its dates are any dates): the fair row to compare them on.
SHARED_TYPES = ("email", "phone", "national_id", "card", "iban")
# Targets the scrubber is held to (tests/participant/test_pii.py asserts them).
RECALL_TARGETS: dict[str, float] = {kind: 0.95 for kind in STRUCTURED_TYPES} | {"name": 0.8, "address": 0.8}
PRECISION_TARGET = 0.95

Span = tuple[int, int, str]  # start, end, type
Detector = Callable[[str], list[Span]]


@dataclass(frozen=True)
class Case:
    id: str
    lang: str
    category: str
    text: str
    spans: tuple[Span, ...]


class CaseFileError(ValueError):
    """A cases file that is not one labelled case (a JSON object) a line; the message names the line."""


def load_cases(path: Path = CASES_PATH) -> list[Case]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseFileError(f"{path}: cannot read the cases ({exc})") from exc
    cases = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            cases.append(_case(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            why = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CaseFileError(
                f"{path}:{number}: not a labelled case ({why}); expected one JSON object a line:"
                ' {"id", "lang", "category", "text", "spans": [{"start", "end", "type"}]}'
            ) from exc
    return cases


def _case(row: Any) -> Case:
    if not isinstance(row, dict):
        raise TypeError(f"a JSON {type(row).__name__}, not an object")
    text = row["text"]
    if not isinstance(text, str):
        raise TypeError("text is not a string")
    spans = tuple((int(s["start"]), int(s["end"]), str(s["type"])) for s in row["spans"])
    for start, end, kind in spans:
        if kind not in PII_TYPES or not 0 <= start < end <= len(text):
            raise ValueError(f"bad span {start, end, kind}")
    return Case(str(row["id"]), str(row["lang"]), str(row["category"]), text, spans)


# --------------------------------------------------------------------------- scoring


@dataclass
class Score:
    expected: dict[str, int]
    found: dict[str, int]
    detections: int
    correct: int
    lookalikes: int
    lookalikes_changed: int
    seconds: float
    misses: list[dict[str, str]]
    false_positives: list[dict[str, str]]

    def recall(self, kind: str | None = None, kinds: tuple[str, ...] = PII_TYPES) -> float | None:
        """Recall of one type, or of ``kinds`` together."""
        selected = kinds if kind is None else (kind,)
        expected = sum(self.expected[k] for k in selected)
        found = sum(self.found[k] for k in selected)
        return found / expected if expected else None

    @property
    def precision(self) -> float | None:
        return self.correct / self.detections if self.detections else None

    def as_dict(self) -> dict[str, object]:
        return {
            "recall": {kind: _round(self.recall(kind)) for kind in PII_TYPES}
            | {"all": _round(self.recall()), "shared_types": _round(self.recall(kinds=SHARED_TYPES))},
            "expected": self.expected,
            "found": self.found,
            "precision": _round(self.precision),
            "detections": self.detections,
            "correct_detections": self.correct,
            "lookalike_cases": self.lookalikes,
            "lookalike_cases_changed": self.lookalikes_changed,
            "seconds": round(self.seconds, 3),
            "misses": self.misses,
            "false_positives": self.false_positives,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _covered(text: str, expected: Span, detections: list[Span]) -> bool:
    start, end, kind = expected
    needed = {i for i in range(start, end) if text[i].isalnum()}
    for d_start, d_end, d_kind in detections:
        if d_kind == kind:
            needed -= set(range(d_start, d_end))
    return not needed


def score(cases: list[Case], detect: Detector) -> Score:
    result = Score(
        expected=dict.fromkeys(PII_TYPES, 0),
        found=dict.fromkeys(PII_TYPES, 0),
        detections=0,
        correct=0,
        lookalikes=0,
        lookalikes_changed=0,
        seconds=0.0,
        misses=[],
        false_positives=[],
    )
    for case in cases:
        started = time.perf_counter()
        detections = detect(case.text)
        result.seconds += time.perf_counter() - started
        for span in case.spans:
            result.expected[span[2]] += 1
            if _covered(case.text, span, detections):
                result.found[span[2]] += 1
            else:
                result.misses.append({"case": case.id, "type": span[2], "text": case.text[span[0] : span[1]]})
        for d_start, d_end, d_kind in detections:
            result.detections += 1
            if any(kind == d_kind and d_start < end and start < d_end for start, end, kind in case.spans):
                result.correct += 1
            else:
                result.false_positives.append({"case": case.id, "type": d_kind, "text": case.text[d_start:d_end]})
        if not case.spans:
            result.lookalikes += 1
            result.lookalikes_changed += bool(detections)
    return result


# --------------------------------------------------------------------------- detectors


def fedmask_detector(text: str) -> list[Span]:
    return [(span.start, span.end, span.kind) for span in find_pii(text)]


_PRESIDIO_TYPES = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "card",
    "IBAN_CODE": "iban",
    "US_SSN": "national_id",
    "UK_NINO": "national_id",
    "UK_NHS": "national_id",
    "UK_POSTCODE": "address",
    "DATE_TIME": "dob",
}


def presidio_detector() -> tuple[Detector | None, str]:
    """Presidio's pattern recognizers as a detector, or None and why not."""
    try:
        # Imported by name: an optional extra, with neither stubs nor a place in the type check.
        recognizers = importlib.import_module("presidio_analyzer.predefined_recognizers")
        tldextract = importlib.import_module("tldextract.tldextract")
    except ImportError as exc:
        return None, f"presidio_analyzer is not installed ({exc.name}); pip install 'fedmask[pii-bench]' to compare"
    # Use the suffix list bundled with tldextract instead of downloading a fresh one.
    tldextract.TLD_EXTRACTOR.suffix_list_urls = ()
    active = [
        recognizers.EmailRecognizer(),
        recognizers.PhoneRecognizer(supported_regions=("US", "GB", "CN", "DE", "FR")),
        recognizers.CreditCardRecognizer(),
        recognizers.IbanRecognizer(),
        recognizers.UsSsnRecognizer(),
        recognizers.UkNinoRecognizer(),
        recognizers.NhsRecognizer(),
        recognizers.UkPostcodeRecognizer(),
        recognizers.DateRecognizer(),
    ]

    def detect(text: str) -> list[Span]:
        results = []
        for recognizer in active:
            for found in recognizer.analyze(text, recognizer.supported_entities, None):
                kind = _PRESIDIO_TYPES.get(found.entity_type)
                if kind is not None:
                    results.append((found.score, found.start, found.end, kind))
        kept: list[Span] = []
        for _, start, end, kind in sorted(results, key=lambda r: (-r[0], r[1] - r[2])):
            if all(end <= k_start or k_end <= start for k_start, k_end, _ in kept):
                kept.append((start, end, kind))
        return sorted(kept)

    return detect, f"presidio_analyzer {metadata.version('presidio-analyzer')}"


# --------------------------------------------------------------------------- command


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_table(cases: list[Case], scores: dict[str, Score], path: Path, show_misses: bool, title: str = "") -> None:
    lookalikes = sum(1 for case in cases if not case.spans)
    languages = {lang: sum(1 for case in cases if case.lang == lang) for lang in sorted({c.lang for c in cases})}
    click.echo(
        f"{title}{len(cases)} cases ({', '.join(f'{n} {lang}' for lang, n in languages.items())}; "
        f"{lookalikes} look-alikes without PII) from {path}"
    )
    if not title:
        click.echo("found = the detections of the span's type cover all its letters and digits; a detection is")
        click.echo("correct when it overlaps an expected span of its type (partial overlaps count as correct).")
    click.echo()
    tools = list(scores)
    any_score = scores[tools[0]]
    header = f"{'type':<12} {'spans':>5} {'target':>7}" + "".join(f" {tool + ' recall':>17}" for tool in tools)
    click.echo(header)
    click.echo("-" * len(header))
    for kind in PII_TYPES:
        row = f"{kind:<12} {any_score.expected[kind]:>5} {RECALL_TARGETS[kind]:>7.2f}"
        click.echo(row + "".join(f" {_fmt(scores[tool].recall(kind)):>17}" for tool in tools))
    total = sum(any_score.expected.values())
    click.echo(f"{'all':<12} {total:>5} {'':>7}" + "".join(f" {_fmt(scores[t].recall()):>17}" for t in tools))
    shared = sum(any_score.expected[kind] for kind in SHARED_TYPES)
    click.echo(
        f"{'shared types':<12} {shared:>5} {'':>7}"
        + "".join(f" {_fmt(scores[t].recall(kinds=SHARED_TYPES)):>17}" for t in tools)
        + "   ("
        + ", ".join(SHARED_TYPES)
        + ")"
    )
    click.echo()
    click.echo(
        f"{'precision':<20} {PRECISION_TARGET:>5.2f}" + "".join(f" {_fmt(scores[t].precision):>17}" for t in tools)
    )
    click.echo(
        f"{'detections':<26}" + "".join(f" {f'{scores[t].correct}/{scores[t].detections} correct':>17}" for t in tools)
    )
    click.echo(
        f"{'look-alikes changed':<26}"
        + "".join(f" {f'{scores[t].lookalikes_changed}/{scores[t].lookalikes}':>17}" for t in tools)
    )
    click.echo(
        f"{'ms per case':<26}" + "".join(f" {1000 * scores[t].seconds / max(1, len(cases)):>17.3f}" for t in tools)
    )
    if show_misses:
        for tool in tools:
            click.echo(f"\n{tool}: {len(scores[tool].misses)} missed spans, {len(scores[tool].false_positives)} false")
            for miss in scores[tool].misses:
                click.echo(f"  missed {miss['type']:<11} {miss['case']:<18} {miss['text']}")
            for false in scores[tool].false_positives:
                click.echo(f"  false  {false['type']:<11} {false['case']:<18} {false['text']}")


@click.command("pii")
@click.option(
    "--cases",
    "cases_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=CASES_PATH,
    show_default="bench/pii_cases.jsonl",
    help="Labelled cases, one JSON object a line.",
)
@click.option(
    "--heldout",
    "heldout_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=HELDOUT_PATH,
    show_default="bench/pii_cases_heldout.jsonl",
    help="Held-out cases, scored in a table of their own (skipped when the file is absent).",
)
@click.option("--no-heldout", is_flag=True, help="Score only the --cases file.")
@click.option("--no-presidio", is_flag=True, help="Do not run Presidio's recognizers even when installed.")
@click.option("--show-misses", is_flag=True, help="List every missed span and false detection.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def pii(
    cases_path: Path, heldout_path: Path, no_heldout: bool, no_presidio: bool, show_misses: bool, as_json: bool
) -> None:
    """PII scrubber: recall per type and precision, next to Presidio's pattern recognizers."""
    try:
        cases = load_cases(cases_path)
        heldout = load_cases(heldout_path) if not no_heldout and heldout_path.is_file() else None
    except CaseFileError as exc:
        raise click.ClickException(str(exc)) from exc
    find_pii("warm up: load the gazetteers")
    detectors: dict[str, Detector] = {"fedmask": fedmask_detector}
    presidio_note = "skipped (--no-presidio)"
    if not no_presidio:
        detector, presidio_note = presidio_detector()
        if detector is not None:
            detectors["presidio"] = detector
    scores = {tool: score(cases, detect) for tool, detect in detectors.items()}
    heldout_scores = {tool: score(heldout, detect) for tool, detect in detectors.items()} if heldout else None
    if as_json:
        payload = {
            "cases": len(cases),
            "lookalike_cases": sum(1 for case in cases if not case.spans),
            "targets": {"recall": RECALL_TARGETS, "precision": PRECISION_TARGET},
            "presidio": presidio_note,
        } | {tool: result.as_dict() for tool, result in scores.items()}
        if heldout is not None and heldout_scores is not None:
            payload["heldout"] = {
                "cases": len(heldout),
                "lookalike_cases": sum(1 for case in heldout if not case.spans),
            } | {tool: result.as_dict() for tool, result in heldout_scores.items()}
        click.echo(json.dumps(payload, ensure_ascii=False))
        return
    _print_table(cases, scores, cases_path, show_misses)
    if heldout is not None and heldout_scores is not None:
        click.echo()
        _print_table(heldout, heldout_scores, heldout_path, show_misses, title="Held-out set (not tuned on): ")
    elif not no_heldout:
        click.echo(f"\nHeld-out set: skipped ({heldout_path} not found)")
    if "presidio" not in scores:
        click.echo(f"\nPresidio: {presidio_note}")
    else:
        click.echo(f"\nPresidio: {presidio_note}, pattern recognizers only (no NER)")
