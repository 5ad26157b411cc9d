"""PII scrubbing for local records before they reach training.

``scrub(text)`` replaces every identifier it finds by a typed placeholder such as ``[CARD]`` and
counts the replacements per type; the counts go into the training report. The types, in report
order, are ``PII_TYPES``:

=============  =======================================================================
email          e-mail addresses, also written straight against Chinese text
phone          international (+CC / 00CC), North American, UK, Chinese mobiles and landlines
national_id    Chinese resident IDs (18 and 15 digits, spaced or not, by shape: a wrong
               check character is still an ID), US SSN, UK NI and NHS numbers, Hong Kong
               IDs, passport numbers after the word "passport"
card           payment card numbers (Luhn, or a card's shape after the word "card")
iban           IBANs (mod-97, or the country's length after the word "IBAN")
mrn            medical record numbers after a context word (MRN, 病历号, 住院号, ...)
dob            dates of birth: dates next to "DOB", "born", "出生日期", "生日", ...
name           people's names (English and Chinese), from titles, context words, gazetteers
address        street addresses, PO boxes, UK postcodes, Chinese addresses
=============  =======================================================================

How it works: the text is first normalised one character for one (full-width digits, letters
and punctuation fold to ASCII, so ``１３８…`` and ``＠`` match like their ASCII forms, and every
offset in the normalised text is an offset in the original, whose span is what gets replaced).
Each detector (``pii_patterns``, ``pii_names``, ``pii_addresses``) proposes candidate spans with
a rank; overlaps are resolved by rank (specific shapes and checksums before context-confirmed
numbers, before loose shapes, names last), then by length, so that no identifier is ever cut in
two by a looser pattern. Context-free shapes that also occur in clinical text are not taken:
visit dates, doses, lab values, ICD-10 codes, eponyms ("Parkinson's disease") stay.

A hospital adds its own record-number formats with ``ScrubConfig(mrn_patterns=...)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache

from fedmask.participant.pii_addresses import find_addresses
from fedmask.participant.pii_checksums import (
    IBAN_LENGTHS,
    cn_resident_id_check_char,
    cn_resident_id_valid,
    iban_valid,
    luhn_valid,
)
from fedmask.participant.pii_names import find_names
from fedmask.participant.pii_patterns import (
    DEFAULT_MRN_CONTEXT,
    DEFAULT_MRN_PATTERNS,
    Candidate,
    compile_mrn_context,
    find_cards,
    find_dates_after_names,
    find_dates_of_birth,
    find_emails,
    find_ibans,
    find_mrns,
    find_national_ids,
    find_phones,
)

__all__ = [
    "IBAN_LENGTHS",
    "PII_TYPES",
    "PLACEHOLDERS",
    "PiiSpan",
    "ScrubConfig",
    "ScrubResult",
    "cn_resident_id_check_char",
    "cn_resident_id_valid",
    "empty_counts",
    "find_pii",
    "iban_valid",
    "luhn_valid",
    "normalise",
    "scrub",
    "scrub_texts",
]

# The placeholder types, in the order they are reported.
PII_TYPES: tuple[str, ...] = ("email", "phone", "national_id", "card", "iban", "mrn", "dob", "name", "address")

PLACEHOLDERS: dict[str, str] = {kind: f"[{kind.upper()}]" for kind in PII_TYPES}


# --------------------------------------------------------------------------- normalisation

# Full-width ASCII variants (U+FF01..U+FF5E) and the ideographic space, one character for one.
_FULL_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def normalise(text: str) -> str:
    """``text`` with full-width forms folded to ASCII; same length, so offsets carry over."""
    return text.translate(_FULL_WIDTH)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ScrubConfig:
    """What to look for. The defaults suit the demo parties; a hospital adds its own formats."""

    # Regular expressions of record numbers recognised without any context word (e.g. r"\bH\d{7}\b").
    mrn_patterns: tuple[str, ...] = DEFAULT_MRN_PATTERNS
    # Regular expressions of the words that introduce a record number (case-insensitive).
    mrn_context: tuple[str, ...] = DEFAULT_MRN_CONTEXT
    # The types to detect; the others are left in the text (and counted as zero).
    kinds: frozenset[str] = field(default_factory=lambda: frozenset(PII_TYPES))

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(PII_TYPES)
        if unknown:
            raise ValueError(f"unknown PII types {sorted(unknown)}; expected some of {PII_TYPES}")


DEFAULT_CONFIG = ScrubConfig()


@cache
def _compiled_mrn(context: tuple[str, ...], patterns: tuple[str, ...]) -> tuple[re.Pattern[str], list[re.Pattern[str]]]:
    return compile_mrn_context(context), [re.compile(pattern) for pattern in patterns]


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class PiiSpan:
    start: int
    end: int
    kind: str
    text: str


def _candidates(text: str, config: ScrubConfig) -> Iterable[Candidate]:
    kinds = config.kinds
    if "email" in kinds:
        yield from find_emails(text)
    if "iban" in kinds:
        yield from find_ibans(text)
    if "card" in kinds:
        yield from find_cards(text)
    if "national_id" in kinds:
        yield from find_national_ids(text)
    if "dob" in kinds:
        yield from find_dates_of_birth(text)
    if "mrn" in kinds:
        context, patterns = _compiled_mrn(config.mrn_context, config.mrn_patterns)
        yield from find_mrns(text, context, patterns)
    if "phone" in kinds:
        yield from find_phones(text)
    if "address" in kinds:
        yield from find_addresses(text)
    if "name" in kinds or "dob" in kinds:
        names = list(find_names(text))
        if "name" in kinds:
            yield from names
        if "dob" in kinds:
            yield from find_dates_after_names(text, names)


def find_pii(text: str, config: ScrubConfig = DEFAULT_CONFIG) -> list[PiiSpan]:
    """The PII spans of ``text``, in text order, none overlapping another."""
    normalised = normalise(text)
    chosen: list[Candidate] = []
    taken = bytearray(len(text))  # 1 where a chosen span already covers the character
    for candidate in sorted(_candidates(normalised, config), key=lambda c: (c.rank, c.start - c.end, c.start)):
        if candidate.end <= candidate.start or any(taken[candidate.start : candidate.end]):
            continue
        taken[candidate.start : candidate.end] = b"\x01" * (candidate.end - candidate.start)
        chosen.append(candidate)
    chosen.sort(key=lambda c: c.start)
    return [PiiSpan(c.start, c.end, c.kind, text[c.start : c.end]) for c in chosen]


# --------------------------------------------------------------------------- API


@dataclass(frozen=True)
class ScrubResult:
    text: str
    counts: dict[str, int]


def empty_counts() -> dict[str, int]:
    """A count of zero for every PII type, in report order."""
    return {kind: 0 for kind in PII_TYPES}


def scrub(text: str, config: ScrubConfig = DEFAULT_CONFIG) -> ScrubResult:
    """Replace every PII occurrence in ``text`` by its typed placeholder."""
    counts = empty_counts()
    pieces: list[str] = []
    last = 0
    for span in find_pii(text, config):
        pieces.append(text[last : span.start])
        pieces.append(PLACEHOLDERS[span.kind])
        last = span.end
        counts[span.kind] += 1
    pieces.append(text[last:])
    return ScrubResult(text="".join(pieces), counts=counts)


def scrub_texts(texts: Iterable[str], config: ScrubConfig = DEFAULT_CONFIG) -> tuple[list[str], dict[str, int]]:
    """Scrub many texts; return the scrubbed texts and the summed counts per type."""
    totals = empty_counts()
    out: list[str] = []
    for text in texts:
        result = scrub(text, config)
        out.append(result.text)
        for kind, count in result.counts.items():
            totals[kind] += count
    return out, totals
