"""PII scrubbing for local records before they reach training.

Each detector is a regular expression that finds candidates plus, where the identifier carries
one, a checksum that confirms them (Luhn for card numbers, ISO 13616 mod-97 for IBANs, ISO 7064
MOD 11-2 for Chinese resident IDs). Confirmed matches are replaced by a typed placeholder such as
``[CARD]``; the number of replacements per type goes into the training report.

Detectors run in a fixed order, most specific first, so that a long identifier is never partly
taken by a looser pattern (an IBAN's digits must not turn into a phone number).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# The placeholder types, in the order they are reported.
PII_TYPES: tuple[str, ...] = ("email", "phone", "national_id", "card", "iban")

PLACEHOLDERS: dict[str, str] = {kind: f"[{kind.upper()}]" for kind in PII_TYPES}


# --------------------------------------------------------------------------- checksums


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (only 0-9) passes the Luhn check used by payment cards."""
    if not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


# Lengths of IBANs by country (ISO 13616 registry, the countries most likely in our records).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24,
    "AE": 23,
    "AT": 20,
    "BE": 16,
    "BG": 22,
    "CH": 21,
    "CY": 28,
    "CZ": 24,
    "DE": 22,
    "DK": 18,
    "EE": 20,
    "ES": 24,
    "FI": 18,
    "FR": 27,
    "GB": 22,
    "GR": 27,
    "HR": 21,
    "HU": 28,
    "IE": 22,
    "IS": 26,
    "IT": 27,
    "LI": 21,
    "LT": 20,
    "LU": 20,
    "LV": 21,
    "MC": 27,
    "MT": 31,
    "NL": 18,
    "NO": 15,
    "PL": 28,
    "PT": 25,
    "RO": 24,
    "SA": 24,
    "SE": 24,
    "SI": 19,
    "SK": 24,
    "SM": 27,
    "TR": 26,
}


def iban_valid(iban: str) -> bool:
    """True when ``iban`` (no spaces) has its country's length and passes mod-97."""
    iban = iban.upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", iban):
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK = "10X98765432"


def cn_resident_id_check_char(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of a Chinese resident ID's first 17 digits."""
    total = sum(int(d) * w for d, w in zip(first17, _CN_ID_WEIGHTS, strict=True))
    return _CN_ID_CHECK[total % 11]


def cn_resident_id_valid(value: str) -> bool:
    """True for an 18-character Chinese resident ID with a real birth date and a valid check."""
    value = value.upper()
    if not re.fullmatch(r"[1-9]\d{16}[\dX]", value):
        return False
    try:
        _dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    return cn_resident_id_check_char(value[:17]) == value[17]


# --------------------------------------------------------------------------- detectors


@dataclass(frozen=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]
    # Given the match, return the (start, end) span to replace, or None to leave it alone.
    confirm: Callable[[re.Match[str]], tuple[int, int] | None]


def _whole(check: Callable[[str], bool]) -> Callable[[re.Match[str]], tuple[int, int] | None]:
    def confirm(match: re.Match[str]) -> tuple[int, int] | None:
        return match.span() if check(match.group(0)) else None

    return confirm


def _digits_only(text: str) -> str:
    return re.sub(r"\D", "", text)


def _confirm_iban(match: re.Match[str]) -> tuple[int, int] | None:
    # The grouped pattern may run into a following upper-case word ("... 3000 ASAP"): try the
    # longest prefix first and keep the first one that is a valid IBAN.
    text = match.group(0)
    alnum_positions = [i for i, char in enumerate(text) if char.isalnum()]
    compact = "".join(text[i] for i in alnum_positions)
    for length in range(len(compact), 14, -1):
        if iban_valid(compact[:length]):
            end = match.start() + alnum_positions[length - 1] + 1
            return match.start(), end
    return None


def _confirm_card(match: re.Match[str]) -> tuple[int, int] | None:
    digits = _digits_only(match.group(0))
    return match.span() if 13 <= len(digits) <= 19 and luhn_valid(digits) else None


def _confirm_phone(match: re.Match[str]) -> tuple[int, int] | None:
    digits = _digits_only(match.group(0))
    return match.span() if 7 <= len(digits) <= 15 else None


def _confirm_ssn(match: re.Match[str]) -> tuple[int, int] | None:
    area, group, serial = re.split(r"[- ]", match.group(0))
    if area in ("000", "666") or area.startswith("9") or group == "00" or serial == "0000":
        return None
    return match.span()


_DETECTORS: tuple[_Detector, ...] = (
    _Detector(
        "email",
        re.compile(
            r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
            r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])"
        ),
        lambda m: m.span(),
    ),
    # IBAN: two letters, two check digits, then groups of up to four (spaced or not).
    _Detector(
        "iban",
        re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{1,4}){3,8}(?![a-z0-9])"),
        _confirm_iban,
    ),
    # Chinese resident ID before cards: 18 digits that pass a card's Luhn by chance must
    # still be reported as the ID they are (the date and MOD 11-2 check make this specific).
    _Detector(
        "national_id",
        re.compile(r"(?<![A-Za-z0-9])[1-9]\d{16}[\dXx](?![A-Za-z0-9])"),
        _whole(cn_resident_id_valid),
    ),
    # Card numbers: 13-19 digits, contiguous or in groups separated by one space or hyphen.
    _Detector(
        "card",
        re.compile(
            r"(?<![\d-])(?:\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?"
            r"|\d{4}([ -])\d{6}\2\d{4,5}"
            r"|\d{13,19})(?![\d])"
        ),
        _confirm_card,
    ),
    # US social security number (hyphenated or spaced), excluding never-issued areas.
    _Detector(
        "national_id",
        re.compile(r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d-])"),
        _confirm_ssn,
    ),
    # UK National Insurance number (the prefix letters follow HMRC's exclusions).
    _Detector(
        "national_id",
        re.compile(
            r"(?<![A-Za-z0-9])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
            r" ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])"
        ),
        lambda m: m.span(),
    ),
    # Phone numbers: international (+CC ...), North American, Chinese mobile, UK national.
    _Detector(
        "phone",
        re.compile(
            r"(?<![\w+])(?:"
            r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"
            r"|\(\d{3}\) ?\d{3}[-. ]\d{4}"
            r"|\d{3}[-.]\d{3}[-.]\d{4}"
            r"|1[3-9]\d[ -]?\d{4}[ -]?\d{4}"
            r"|0\d{2,4} ?\d{3,4} ?\d{3,4}"
            r")(?![\d])"
        ),
        _confirm_phone,
    ),
)


# --------------------------------------------------------------------------- API


@dataclass(frozen=True)
class ScrubResult:
    text: str
    counts: dict[str, int]


def empty_counts() -> dict[str, int]:
    """A count of zero for every PII type, in report order."""
    return {kind: 0 for kind in PII_TYPES}


def scrub(text: str) -> ScrubResult:
    """Replace every confirmed PII occurrence in ``text`` by its typed placeholder."""
    counts = empty_counts()
    for detector in _DETECTORS:
        pieces: list[str] = []
        last = 0
        for match in detector.pattern.finditer(text):
            span = detector.confirm(match)
            if span is None:
                continue
            start, end = span
            pieces.append(text[last:start])
            pieces.append(PLACEHOLDERS[detector.kind])
            last = end
            counts[detector.kind] += 1
        if pieces:
            pieces.append(text[last:])
            text = "".join(pieces)
    return ScrubResult(text=text, counts=counts)


def scrub_texts(texts: Iterable[str]) -> tuple[list[str], dict[str, int]]:
    """Scrub many texts; return the scrubbed texts and the summed counts per type."""
    totals = empty_counts()
    out: list[str] = []
    for text in texts:
        result = scrub(text)
        out.append(result.text)
        for kind, count in result.counts.items():
            totals[kind] += count
    return out, totals
