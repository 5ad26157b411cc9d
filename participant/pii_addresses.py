"""Postal addresses in English and Chinese text.

English: a house number, one to three capitalised words and a street suffix ("42 Elm Street",
"7 Harbour View Drive", "55 Kings Rd"), or a PO box; with a flat or unit before it and, after it,
up to two comma-separated place names and a US state with ZIP code or a UK postcode. A UK postcode
on its own ("M13 9PL") is an address too.

Chinese: a chain of administrative and street components in their usual order, 省 > 市 > 区/县 >
街道/镇 > 村 > 路/街/大道 > 号 > 小区/大厦 > 栋 > 单元 > 楼 > 室. It takes at least one named
component (a place, road or estate: "3楼301室" is a room in a building named elsewhere) and
either a second component ("病区", "旁路", "3号床" alone are no addresses) or an address word
before it ("家住海淀区"). Words that introduce the address ("家住", "居住于") are not part of it;
where the chain starts inside other words, a known province or city name marks its start.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from fedmask.participant.pii_names import gazetteer
from fedmask.participant.pii_patterns import RANK_ADDRESS, Candidate

# --------------------------------------------------------------------------- English

_HOUSE_NUMBER = r"\d{1,5}[A-Za-z]?(?:[/-]\d{1,5}[A-Za-z]?)?"
_STREET_WORD = r"(?:[A-Z][a-z]+(?:['’]s)?|\d{1,3}(?:st|nd|rd|th)|[NSEW])"
_STREET_SUFFIX = (
    r"(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Court|Ct|Close|Way|Place|Pl|Boulevard|Blvd|Crescent"
    r"|Cres|Terrace|Gardens|Grove|Square|Sq|Parade|Row|Mews|Parkway|Pkwy|Highway|Hwy|Walk|View|Rise|Hill"
    r"|Park|Circle|Cir|Trail|Green|Gate|Wharf|Quay|Approach|Broadway|Esplanade|Embankment|Heights|Chase"
    r"|Croft|Vale|Meadows?|Ridge|Yard|Alley|Loop|Causeway|Turnpike|Pike|Mall)"
)
_UNIT = r"(?:Flat|Apt|Apartment|Unit|Suite|Ste)\.? ?[0-9][0-9A-Za-z]{0,4}"
_UK_POSTCODE = r"(?:[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2})"
_US_STATE_ZIP = r"(?:[A-Z]{2} \d{5}(?:-\d{4})?)"
_AU_STATE_POSTCODE = r"(?:(?:NSW|VIC|QLD|SA|WA|TAS|ACT|NT) \d{4})"
_CA_PROVINCE_POSTCODE = r"(?:(?:AB|BC|MB|NB|NL|NS|NT|NU|ON|PE|QC|SK|YT),? [A-Z]\d[A-Z] ?\d[A-Z]\d)"
_PLACE = r"(?:[A-Z][a-z]+(?: [A-Z][a-z]+){0,2})"
# A named building between the flat and the street ("Flat 12, Orchard Court, 5 High Street").
_BUILDING = r"(?:[A-Z][a-z]+ ){1,2}(?:House|Court|Lodge|Mansions|Tower|Apartments|Cottages?|Hall|Buildings?|Block)"
_STREET = (
    # "Unit 4/22 George St": the unit word straight before a unit/house number.
    rf"(?:{_UNIT},? |(?:Flat|Apt|Apartment|Unit|Suite|Ste)\.? ?(?=\d{{1,5}}[A-Za-z]?/))?(?:{_BUILDING},? )?"
    rf"{_HOUSE_NUMBER},? (?:{_STREET_WORD} ){{1,3}}{_STREET_SUFFIX}\.?"
    r"(?: (?:NW|NE|SW|SE|N|S|E|W)(?![A-Za-z]))?"
)
_PO_BOX = r"P\.? ?O\.? Box \d{1,6}"
# "4 The Paddocks, Thornbury, Bristol BS35 1AA": a street without a suffix, only with a postcode.
_THE_STREET = (
    rf"{_HOUSE_NUMBER},? The (?:[A-Z][a-z]+ )?[A-Z][a-z]+(?=(?:, {_PLACE}){{1,2}},? {_UK_POSTCODE}(?![A-Za-z0-9]))"
)
# Continental streets: "16 rue Victor Hugo", "15 rue de la Paix", "Via Roma 12", "Hauptstraße 5",
# "Laan van Meerdervoort 12", "Kalverstraat 92".
# Avenue, place and boulevard only in lower case, as French writes them ("5 Avenue Health" is no street).
_LOWER_EU = "a-zà-öø-ÿß"
_PARTICLES = r"(?:de|la|du|des|d'|del|della|di|do|da|von|van)"
_EU_WORD = rf"[A-ZÀ-ÖØ-Þ][{_LOWER_EU}]+(?:-[A-ZÀ-ÖØ-Þ][{_LOWER_EU}]+)*"
_STREET_ENDING = "(?:straße|strasse|weg|gasse|platz|allee|damm|straat|laan|plein|gracht|kade|gatan|vägen)"
_CONTINENTAL = (
    rf"{_HOUSE_NUMBER},? (?:[Rr]ue|avenue|boulevard|[Aa]llée|[Cc]hemin|quai|[Ii]mpasse|place)"
    rf"(?: (?:{_PARTICLES}|{_EU_WORD})){{0,4}} {_EU_WORD}"
    rf"|(?:Via|Viale|Calle|Avenida|Rua|Piazza|Corso|Laan|Plein) (?:{_PARTICLES} )?{_EU_WORD}(?: {_EU_WORD})?"
    r",? \d{1,4}"
    rf"|[A-Z][{_LOWER_EU}]+{_STREET_ENDING} \d{{1,4}}[a-z]?(?! ?(?:mg|g|kg|ml|mL|mmol|units?|%|cm|mm|km)\b)"
)
_ADDRESS_EN = re.compile(
    rf"(?<![A-Za-z0-9])(?:{_STREET}|{_PO_BOX}|{_THE_STREET}|{_CONTINENTAL})"
    rf"(?:,? {_UNIT})?(?:, (?:\d{{4,5}} )?{_PLACE}){{0,2}}"  # "Hauptstraße 5, 10115 Berlin"
    rf"(?:,? (?:{_US_STATE_ZIP}|{_AU_STATE_POSTCODE}|{_CA_PROVINCE_POSTCODE}|{_UK_POSTCODE}))?(?![A-Za-z0-9])"
)
_POSTCODE_ALONE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}(?![A-Za-z0-9])")


def find_english_addresses(text: str) -> Iterator[Candidate]:
    for pattern in (_ADDRESS_EN, _POSTCODE_ALONE):
        for match in pattern.finditer(text):
            yield Candidate(match.start(), match.end(), "address", RANK_ADDRESS)


# --------------------------------------------------------------------------- Chinese

_HAN = "\u4e00-\u9fff"
_ROAD_SECTION = "(?:[一二三四五六七八九十0-9]{1,3}段)?"  # 人民南路四段
_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("province", rf"[{_HAN}]{{2,7}}(?:省|自治区)"),
    ("city", rf"[{_HAN}]{{1,6}}(?:市|州|盟|地区)"),
    ("district", rf"[{_HAN}]{{1,6}}(?:区|县|旗|市)"),
    ("town", rf"[{_HAN}]{{1,6}}(?:街道|镇|乡)"),
    ("village", rf"[{_HAN}]{{1,6}}村"),
    # A bare 道 (高新南七道) only before a house number: 食道, 气道 and 呼吸道 are no roads.
    ("road", rf"[{_HAN}0-9]{{1,10}}(?:大道|大街|路|街|巷|弄|胡同|道(?=\d{{1,5}}号)){_ROAD_SECTION}"),
    ("number", r"\d{1,5}(?:-\d{1,4})?号院?"),
    ("estate", rf"[{_HAN}]{{2,8}}(?:小区|花园|大厦|公寓|新村|家园|苑|广场|写字楼|大楼|商厦|华庭|家属院|宿舍)"),
    ("building", r"\d{1,3}(?:号楼|栋|幢|座)"),
    ("entrance", r"\d{1,2}单元"),
    ("floor", r"\d{1,3}(?:楼|层)"),
    # "2单元301": after an entrance or a building the room needs no 室.
    ("room", r"\d{1,5}(?:室|房)|(?:(?<=单元)|(?<=号楼)|(?<=[栋幢座]))\d{3,4}(?![0-9])"),
)
_NAMED_COMPONENTS = frozenset(("province", "city", "district", "town", "village", "road", "estate"))
# Every component is optional; the lookahead skips positions where none can start.
_ADDRESS_ZH = re.compile(f"(?=[{_HAN}0-9])" + "".join(f"(?P<{name}>{pattern})?" for name, pattern in _COMPONENTS))
_HAS_HAN = re.compile(f"[{_HAN}]")
# Words that lead into an address; dropped from its start, and enough on their own to make a
# single component an address ("家住海淀区").
_ZH_ADDRESS_INTRO = "住址|地址|家住|住在|现住址?|居住于|居住在|居住|现居|户籍地?|寄往|寄到|送往|来自|位于"
# Anchored by match() at the component start (a "^" would only match at the start of the text).
_ZH_INTRO_PREFIX = re.compile(rf"(?:.*(?:{_ZH_ADDRESS_INTRO}))?(?:为|是|在|于)?")
_ZH_INTRO_BEFORE = re.compile(rf"(?:{_ZH_ADDRESS_INTRO})[:\s]*(?:为|是|在|于)?$")


def _known_places() -> frozenset[str]:
    return gazetteer("zh", "places")


def _address_start(text: str, match: re.Match[str]) -> int:
    """Where the address in ``match`` begins, past any words that led into it."""
    first = next(name for name, _ in _COMPONENTS if match[name])
    component_start, component_end = match.span(first)
    positions = [text.find(place, component_start, component_end) for place in _known_places()]
    positions = [position for position in positions if position >= 0]
    if positions:
        return min(positions)
    prefix = _ZH_INTRO_PREFIX.match(text, component_start, component_end)
    start = prefix.end() if prefix else component_start
    # Keep at least one character before the component's suffix.
    return start if start < component_end - 1 else component_start


def find_chinese_addresses(text: str) -> Iterator[Candidate]:
    if not _HAS_HAN.search(text):
        return
    for match in _ADDRESS_ZH.finditer(text):
        if match.end() == match.start():
            continue
        present = [name for name, _ in _COMPONENTS if match[name]]
        if not set(present) & _NAMED_COMPONENTS:
            continue  # "3楼301室", "3号床": rooms and numbers inside a building already named elsewhere
        start = _address_start(text, match)
        if len(present) >= 2 or _ZH_INTRO_BEFORE.search(text, max(0, start - 8), start):
            yield Candidate(start, match.end(), "address", RANK_ADDRESS)


def find_addresses(text: str) -> Iterator[Candidate]:
    yield from find_english_addresses(text)
    yield from find_chinese_addresses(text)
