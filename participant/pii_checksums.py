"""Check digits of the identifiers the PII scrubber knows.

The scrubber uses them to tell a real card or IBAN from a number of the same shape; for national
IDs it does not (a typo'd ID is still an ID), but the demo data uses them to make valid ones.
"""

from __future__ import annotations

import datetime as _dt
import re


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


def iban_shape_valid(iban: str) -> bool:
    """True when ``iban`` (no spaces) looks like an IBAN of a known country, whatever its check digits."""
    iban = iban.upper()
    return bool(re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", iban)) and IBAN_LENGTHS.get(iban[:2]) == len(iban)


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


def plausible_birth_date(year: int, month: int, day: int) -> bool:
    """True for a calendar date between 1900 and next year (what a resident ID can carry)."""
    if not 1900 <= year <= _dt.date.today().year + 1:
        return False
    try:
        _dt.date(year, month, day)
    except ValueError:
        return False
    return True


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
