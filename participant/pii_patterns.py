"""Detectors for the structured identifiers: e-mail, phone, national IDs, cards, IBANs, MRNs, DOBs.

Every detector reads the *normalised* text (full-width forms folded to ASCII, one character for
one, see ``pii.normalise``) and yields ``Candidate`` spans; ``pii.find_pii`` resolves overlaps by
rank. Boundaries are ASCII-only (``(?<![A-Za-z0-9])``) rather than ``\\b``: in Python ``\\w``
includes CJK characters, so ``\\b`` would find no boundary in ``电话13800138000``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from fedmask.participant.pii_checksums import iban_shape_valid, iban_valid, luhn_valid, plausible_birth_date


class Candidate(NamedTuple):
    start: int
    end: int
    kind: str
    rank: int  # when two candidates overlap, the lower rank wins (then the longer one)


# Ranks: specific shapes and checksums first, context-confirmed numbers next, loose shapes last,
# so that a long identifier is never partly taken by a looser pattern.
RANK_EMAIL = 0
RANK_IBAN = 1
RANK_CN_ID = 2
RANK_CARD = 3
RANK_CONTEXT_ID = 4
RANK_DOB = 5
RANK_MRN = 6
RANK_SHAPE_ID = 7
RANK_PHONE = 8
RANK_ADDRESS = 9
RANK_NAME = 10

_NOT_ALNUM_BEFORE = r"(?<![A-Za-z0-9])"
_NOT_ALNUM_AFTER = r"(?![A-Za-z0-9])"


# A number must not be cut out of a longer one ("6212 2602 1380 0138 000" is not a phone after
# "6212 2602"): no digit may touch it, directly or across one separator.
_DIGIT_BEFORE = re.compile(r"[0-9][ .-]?$")
_DIGIT_AFTER = re.compile(r"[ .-]?[0-9]+(?![0-9/])")  # "1111 12/26": an expiry date is no continuation


def _part_of_longer_number(text: str, start: int, end: int) -> bool:
    return bool(_DIGIT_AFTER.match(text, end) or _DIGIT_BEFORE.search(text, max(0, start - 2), start))


# Words that say the number after them is a document's, not a person's: no phone or shape-only
# ID right after them ("Order number 445-221-9988", "结算单号440106202403150001").
_NOT_PERSONAL_NUMBER_BEFORE = re.compile(
    r"(?i)(?:\b(?:order|invoice|batch|lot|tracking|transaction|receipt|ticket|serial|specimen|accession"
    r"|confirmation)\b(?: ?(?:number|no\.?|#|id))?|订单号?|发票号码?|单号|流水号|批号|标本号|检查号|条码)[ \t:#.=]*$"
)


def _document_number(text: str, start: int) -> bool:
    return _NOT_PERSONAL_NUMBER_BEFORE.search(text, max(0, start - 30), start) is not None


def _context_before(text: str, start: int, pattern: re.Pattern[str], window: int = 24) -> bool:
    """True when ``pattern`` matches in the ``window`` characters before ``start``."""
    return pattern.search(text, max(0, start - window), start) is not None


# --------------------------------------------------------------------------- e-mail

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+'-])[A-Za-z0-9](?:[A-Za-z0-9._%+'-]*[A-Za-z0-9_])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![A-Za-z0-9-])"
)


def find_emails(text: str) -> Iterator[Candidate]:
    for match in _EMAIL.finditer(text):
        yield Candidate(match.start(), match.end(), "email", RANK_EMAIL)


# --------------------------------------------------------------------------- IBAN

# Two letters, two check digits, then groups of up to four, spaced, hyphenated or run together;
# upper or lower case.
# Also straight after the word "IBAN" in Chinese text ("IBANFR14..."), where no space is usual.
_IBAN = re.compile(r"(?:(?<![A-Za-z0-9])|(?<=IBAN)|(?<=iban))[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]{1,4}){3,8}")
_IBAN_CONTEXT = re.compile(r"(?i)\b(?:IBAN|account|acct)\b|账户|账号")


def find_ibans(text: str) -> Iterator[Candidate]:
    for match in _IBAN.finditer(text):
        # The grouped pattern may run into a following word ("... 3000 ASAP"): take the longest
        # prefix that is an IBAN. With "IBAN" or "account" just before it, a failed check digit
        # is still an IBAN (a typo'd account number identifies its holder as well). A prefix
        # that ends inside a word counts only with valid check digits ("...3000ASAP", a missing
        # space): one in 97 other tokens of that shape passes, a real IBAN always does.
        raw = match.group(0)
        positions = [i for i, char in enumerate(raw) if char.isalnum()]
        compact = "".join(raw[i] for i in positions).upper()
        with_context = _context_before(text, match.start(), _IBAN_CONTEXT)
        for length in range(len(compact), 14, -1):
            prefix = compact[:length]
            if iban_valid(prefix) or (with_context and iban_shape_valid(prefix)):
                end = match.start() + positions[length - 1] + 1
                if end < len(text) and text[end].isalnum() and text[end].isascii() and not iban_valid(prefix):
                    continue
                yield Candidate(match.start(), end, "iban", RANK_IBAN)
                break


# --------------------------------------------------------------------------- cards

# 13-19 digits, contiguous or in groups with one kind of separator: 4-4-4-4, 4-6-5 (Amex),
# 4-4-4-4-3 and the irregular groupings people type ("6212 2602 13800138000"). A group followed
# by "/" is an expiry date, not part of the number.
_CARD = re.compile(
    r"(?<![0-9])(?:\d{13,19}|[2-6]\d{3,5}([ .-])\d{2,15}(?![0-9/])(?:\1\d{1,15}(?![0-9/])){0,4})(?![0-9])"
)
_CARD_CONTEXT = re.compile(r"(?i)\b(?:card|visa|mastercard|amex|debit|credit)\b|卡|账号|账户")


def find_cards(text: str) -> Iterator[Candidate]:
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group(0))
        if not 13 <= len(digits) <= 19 or _part_of_longer_number(text, match.start(), match.end()):
            continue
        # Luhn confirms a card anywhere; after the word "card" a number of a card's shape is a
        # card even when one digit is wrong.
        if luhn_valid(digits) or (
            len(digits) >= 15 and digits[0] in "23456" and _context_before(text, match.start(), _CARD_CONTEXT)
        ):
            yield Candidate(match.start(), match.end(), "card", RANK_CARD)


# --------------------------------------------------------------------------- national IDs

# Chinese resident ID, 18 characters: region (6), birth date (8), sequence (3), check (digit or X).
# Written contiguous or with a space or hyphen between region, year, month-day and sequence.
_CN_ID_18 = re.compile(
    _NOT_ALNUM_BEFORE + r"[1-9]\d{5}[ -]?(?P<year>(?:18|19|20)\d{2})[ -]?(?P<month>\d{2})[ -]?(?P<day>\d{2})"
    r"[ -]?\d{3}[0-9Xx]" + _NOT_ALNUM_AFTER
)
# The first-generation 15-digit ID: region (6), YYMMDD (6), sequence (3), no check character.
_CN_ID_15 = re.compile(
    _NOT_ALNUM_BEFORE + r"[1-9]\d{5}(?P<year>\d{2})(?P<month>\d{2})(?P<day>\d{2})\d{3}" + _NOT_ALNUM_AFTER
)
_ID_CONTEXT = re.compile(r"(?i)\b(?:ID|I\.D\.|identity|national)\b|身份证|证件|身份")

_SSN = re.compile(r"(?<![0-9-])(?P<area>\d{3})([- ])(?P<group>\d{2})\2(?P<serial>\d{4})(?![0-9-])")
_SSN_WITH_CONTEXT = re.compile(
    r"(?i)\b(?:SSN|social security(?: number| no\.?)?)\s*(?:is|:|#|no\.?)?\s*(?P<value>\d{9})(?![0-9])"
)
# UK National Insurance number (the prefix letters follow HMRC's exclusions).
_NINO = re.compile(
    _NOT_ALNUM_BEFORE + r"(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r" ?\d{2} ?\d{2} ?\d{2} ?[A-D]" + _NOT_ALNUM_AFTER
)
_NHS_WITH_CONTEXT = re.compile(
    r"(?i)\bNHS(?: number| no\.?| #)?\s*(?:is|:|#)?\s*(?P<value>\d{3}[ -]?\d{3}[ -]?\d{4})(?![0-9])"
)
_PASSPORT_WITH_CONTEXT = re.compile(
    r"(?i)(?:\bpassport(?: number| no\.?| #)?|护照(?:号码|号)?|通行证(?:号码|号)?)\s*(?:is|为|是|:|#)?\s*"
    r"(?P<value>[A-Z]{0,2}\d{6,9})" + _NOT_ALNUM_AFTER
)
_NINO_WITH_CONTEXT = re.compile(
    r"(?i)(?:\bNINO\b|\bNI (?:number|no\b\.?)|national insurance(?: number| no\b\.?)?)\s*(?:is|:|#)?\s*"
    r"(?P<value>[a-z]{2} ?\d{2} ?\d{2} ?\d{2} ?[a-d])" + _NOT_ALNUM_AFTER
)
# Hong Kong identity card: one or two letters, six digits, the check character in brackets.
_HKID = re.compile(_NOT_ALNUM_BEFORE + r"[A-Z]{1,2}\d{6}\([0-9A]\)")


def _ssn_issued(area: str, group: str, serial: str) -> bool:
    return not (area in ("000", "666") or area.startswith("9") or group == "00" or serial == "0000")


def find_national_ids(text: str) -> Iterator[Candidate]:
    # Scrubbed by shape: a failed check character is still someone's ID. A number whose date
    # part is no date is an ID only when the text says so ("身份证", "ID").
    for match in _CN_ID_18.finditer(text):
        dated = plausible_birth_date(int(match["year"]), int(match["month"]), int(match["day"]))
        if _context_before(text, match.start(), _ID_CONTEXT) or (dated and not _document_number(text, match.start())):
            yield Candidate(match.start(), match.end(), "national_id", RANK_CN_ID)
    for match in _CN_ID_15.finditer(text):
        dated = plausible_birth_date(1900 + int(match["year"]), int(match["month"]), int(match["day"]))
        if dated or _context_before(text, match.start(), _ID_CONTEXT):
            yield Candidate(match.start(), match.end(), "national_id", RANK_SHAPE_ID)
    for match in _SSN.finditer(text):
        if _ssn_issued(match["area"], match["group"], match["serial"]):
            yield Candidate(match.start(), match.end(), "national_id", RANK_SHAPE_ID)
    for match in _SSN_WITH_CONTEXT.finditer(text):
        value = match["value"]
        if _ssn_issued(value[:3], value[3:5], value[5:]):
            yield Candidate(match.start("value"), match.end("value"), "national_id", RANK_CONTEXT_ID)
    for match in _NINO.finditer(text):
        yield Candidate(match.start(), match.end(), "national_id", RANK_SHAPE_ID)
    for pattern in (_NHS_WITH_CONTEXT, _PASSPORT_WITH_CONTEXT, _NINO_WITH_CONTEXT):
        for match in pattern.finditer(text):
            yield Candidate(match.start("value"), match.end("value"), "national_id", RANK_CONTEXT_ID)
    for match in _HKID.finditer(text):
        yield Candidate(match.start(), match.end(), "national_id", RANK_SHAPE_ID)


# --------------------------------------------------------------------------- phones

_EXTENSION = r"(?:\s*(?:ext\.?|x|extension|转|分机)\s*\d{1,5})?"
_PHONE_PATTERNS: tuple[re.Pattern[str], ...] = (
    # International: +CC or 00CC, then groups; "+44 (0)20 ...", "+1 (212) ...". Letters may stand
    # right before the "+" ("tel:+44", "at+86").
    re.compile(
        r"(?:(?<![0-9+])\+|(?<![0-9])00)[1-9]\d{0,2}(?:[ .-]?(?:\(0\)[ .-]?)?(?:\(\d{1,4}\)|\d{1,5})){1,6}" + _EXTENSION
    ),
    # North American: (212) 555-0142, 212-555-0142, 212.555.0142, 212 555 0142, optional 1 prefix.
    re.compile(r"(?<![0-9])(?:1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}" + _EXTENSION),
    # North American written as ten bare digits (area and exchange codes start with 2-9).
    re.compile(r"(?<![0-9])[2-9]\d{2}[2-9]\d{6}(?![0-9])"),
    # Chinese mobile: 1[3-9]x xxxx xxxx, optionally after 86 / 0086 / +86 without a separator.
    re.compile(r"(?<![0-9])(?:(?:86|0086)[ .-]?)?1[3-9]\d[ .-]?\d{4}[ .-]?\d{4}"),
    # Trunk-prefixed national numbers: UK (020 7946 0958, 07700 900123) and Chinese landlines
    # (010-12345678, 0755-8765 4321, (020) 87654321, 021-64881234-8021 with an extension).
    re.compile(r"(?<![0-9])(?:\(0\d{1,4}\)|0\d{1,4})[ .-]?\d{3,4}[ .-]?\d{3,4}(?:-\d{1,5}(?![0-9]))?" + _EXTENSION),
)
# A local number without area code ("555-0142", "8765 4321") only after a word that says phone.
_LOCAL_PHONE = re.compile(r"(?<![0-9])\d{3,4}[ -]\d{4}(?![0-9])")
_PHONE_CONTEXT = re.compile(
    r"(?i)\b(?:phone|tel|telephone|mobile|mob|cell|call|ring|number|fax)\b|电话|手机|致电|回电|号码"
)


def find_phones(text: str) -> Iterator[Candidate]:
    for pattern in _PHONE_PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span()
            digits = re.sub(r"\D", "", match.group(0))
            international = text[start] == "+" or text.startswith("00", start)
            minimum = 8 if international else 10
            if not minimum <= len(digits) <= 17:
                continue
            # "+44 ..." may follow a digit ("ext 2 +44 ..."); a national number may not.
            if _DIGIT_AFTER.match(text, end) if international else _part_of_longer_number(text, start, end):
                continue
            if not international and _document_number(text, start):
                continue
            yield Candidate(start, end, "phone", RANK_PHONE)
    for match in _LOCAL_PHONE.finditer(text):
        start, end = match.span()
        if _context_before(text, start, _PHONE_CONTEXT, window=30) and not _part_of_longer_number(text, start, end):
            yield Candidate(start, end, "phone", RANK_PHONE)


# --------------------------------------------------------------------------- dates of birth

_MONTH_NAMES = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MONTH = r"(?:0?[1-9]|1[0-2])"
_YEAR4 = r"(?:19|20)\d{2}"
_DATE = (
    r"(?:"
    rf"{_YEAR4}[-/.]{_MONTH}[-/.]{_DAY}(?![0-9])"  # 1984-03-12
    rf"|{_DAY}[-/.]{_DAY}[-/.](?:{_YEAR4}|\d{{2}})(?![0-9])"  # 12/03/1984, 03-14-1976, 5/6/53
    rf"|{_DAY}(?:st|nd|rd|th)?[ -](?:of )?{_MONTH_NAMES}\.?,?[ -](?:{_YEAR4}|\d{{2}})(?![0-9])"  # 4 March 1962
    rf"|{_MONTH_NAMES}\.? {_DAY}(?:st|nd|rd|th)?,? {_YEAR4}"  # July 4, 1958
    rf"|(?:{_YEAR4}|\d{{2}})\s*年\s*\d{{1,2}}\s*月\s*\d{{1,2}}\s*[日号]?"  # 1984年3月12日
    rf"|{_YEAR4}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?![0-9])"  # 19840312
    rf"|{_YEAR4}\s*年\s*\d{{1,2}}\s*月"  # 1985年7月
    rf"|{_YEAR4}[-/.]{_MONTH}(?![0-9])"  # 1985.07
    rf"|\d{{1,2}}\s*月\s*\d{{1,2}}\s*[日号]"  # 11月23日 (a birthday without the year)
    rf"|{_MONTH_NAMES}\.?,? {_YEAR4}"  # March 1962
    rf"|{_DAY}(?:st|nd|rd|th)? (?:of )?{_MONTH_NAMES}(?![A-Za-z])"  # 23 November
    r")"
)
# Birth context before the date, within a short gap that holds no digit, comma or sentence end
# ("DOB:", "Name/DOB checked (", "date of birth is"); "born" only as a word of its own, so that
# "first-born" and "newborn" are no context; "[DOB]", a placeholder, is none either.
_DOB_BEFORE = re.compile(
    r"(?i)(?:(?<!\[)\bD\.?O\.?B\b\.?|\bdate of birth\b|\bbirth ?date\b|\bbirthday\b|(?<![A-Za-z-])born\b(?: on)?"
    r"|\bb\.(?= ?\d)|出生日期|出生年月日?|出生时间|出生于|出生|生日|生于)(?: in)?,?"  # "DOB, 12/03/1984"
    r"(?P<gap>[^0-9\n.;。；!?,]{0,20}?)"
    r"(?P<date>" + _DATE + r")",
)
# ... or right after it: "14 Feb 1966 (DOB)", "于2019年6月1日出生", "1962年8月15日生，".
_DOB_AFTER = re.compile(
    r"(?i)(?<![0-9])(?P<date>"
    + _DATE
    + r")\s*(?:\((?:DOB|D\.O\.B\.?|born)\)|出生|生(?![活理产物化命长效殖育存病成意气]))"
)

# A date in brackets right after a person's name is how letters give the date of birth:
# "Mrs Begum (12.08.1962)".
_DATE_IN_BRACKETS = re.compile(r"(?i)['’]?s?,? ?\((?P<date>" + _DATE + r")\)")
_BIRTH_WORD = re.compile(r"(?i)D\.?O\.?B|birth|born|b\.|生")


def find_dates_of_birth(text: str) -> Iterator[Candidate]:
    if not _BIRTH_WORD.search(text):
        return  # both patterns need one of these words; most texts have none
    for pattern in (_DOB_BEFORE, _DOB_AFTER):
        for match in pattern.finditer(text):
            yield Candidate(match.start("date"), match.end("date"), "dob", RANK_DOB)


def find_dates_after_names(text: str, names: Iterable[Candidate]) -> Iterator[Candidate]:
    for name in names:
        match = _DATE_IN_BRACKETS.match(text, name.end)
        if match:
            yield Candidate(match.start("date"), match.end("date"), "dob", RANK_DOB)


# --------------------------------------------------------------------------- medical record numbers

# Words that introduce a hospital's own record number. Extend per hospital with
# ``ScrubConfig.mrn_context``; add its bare formats with ``ScrubConfig.mrn_patterns``.
DEFAULT_MRN_CONTEXT: tuple[str, ...] = (
    r"\bMRN\b",
    r"\bM\.R\.N\b\.?",
    r"\bMR ?#",
    r"\bMR No\b\.?",
    r"\bmedical record (?:number|no\b\.?|#)",
    r"\bhosp(?:ital)? (?:number|no\b\.?|#)",
    r"\bunit (?:number|no\b\.?)",
    r"\bchart (?:number|no\b\.?|#)",
    r"\brecord (?:number|no\b\.?|#)",
    r"\bcase (?:number|no\b\.?)",
    r"\b(?:patient|pt\.?) (?:ID|identifier|number|no\b\.?)",
    r"\bPID\b",
    "住院病历号",
    "病历号",
    "病案号",
    "住院号",
    "门诊号",
    "就诊号",
    "就诊卡号",
    "登记号",
    "档案号",
    "(?:门诊|住院|就诊)ID号?",
    "患者ID号?",
    "病人ID号?",
    "ID号",
)
# Record numbers that carry their own label ("MRN00913377") need no context word.
DEFAULT_MRN_PATTERNS: tuple[str, ...] = (r"(?<![A-Za-z0-9])MRN\d{5,12}(?![A-Za-z0-9])",)

# The value after the context word: groups of digits with single spaces ("12 345 678"), or
# optional letters, then a run of digits, letters and hyphens ("00481236", "RXH-0045123",
# "PT-2023-004512", "556612-B"); it must hold at least four digits.
_MRN_VALUE = r"(?P<value>\d{1,4}(?: \d{3,4}){1,3}(?![0-9])|[A-Za-z]{0,4}-?\d[0-9A-Za-z]*(?:-[0-9A-Za-z]+)*)"
_MRN_SEPARATOR = r"\s*(?:is|为|是|:|#|=|No\.?)?\s*[:#(]?\s*"  # "住院号（1120334）": full-width folds to "("


def compile_mrn_context(words: Sequence[str]) -> re.Pattern[str]:
    return re.compile(r"(?i)(?:" + "|".join(words) + r")" + _MRN_SEPARATOR + _MRN_VALUE + _NOT_ALNUM_AFTER)


def find_mrns(text: str, context: re.Pattern[str], patterns: Sequence[re.Pattern[str]]) -> Iterator[Candidate]:
    for match in context.finditer(text):
        value = match["value"]
        if sum(char.isdigit() for char in value) >= 4 and len(value) <= 24:
            yield Candidate(match.start("value"), match.end("value"), "mrn", RANK_MRN)
    for pattern in patterns:
        for match in pattern.finditer(text):
            yield Candidate(match.start(), match.end(), "mrn", RANK_MRN)
