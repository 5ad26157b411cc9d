"""PII scrubbing: each detector on true positives, and look-alikes it must leave alone."""

from __future__ import annotations

import re

import pytest

from fedmask.demo.data import PARTIES, generate_records
from fedmask.participant.pii import (
    PII_TYPES,
    cn_resident_id_check_char,
    cn_resident_id_valid,
    iban_valid,
    luhn_valid,
    scrub,
    scrub_texts,
)


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("write to john.doe+ward@example.co.uk today", "write to [EMAIL] today", "email"),
        ("Reply: li.wei88@mail.example.org.", "Reply: [EMAIL].", "email"),
        ("SSN 123-45-6789.", "SSN [NATIONAL_ID].", "national_id"),
        ("ID 11010519491231002X", "ID [NATIONAL_ID]", "national_id"),
        ("ID 11010519491231002x on file", "ID [NATIONAL_ID] on file", "national_id"),
        ("NI number AB 12 34 56 C", "NI number [NATIONAL_ID]", "national_id"),
        ("Card 4111 1111 1111 1111.", "Card [CARD].", "card"),
        ("Card 5500-0000-0000-0004 please", "Card [CARD] please", "card"),
        ("amex 3782 822463 10005", "amex [CARD]", "card"),
        ("card 4012888888881881 blocked", "card [CARD] blocked", "card"),
        ("IBAN GB82 WEST 1234 5698 7654 32 thanks", "IBAN [IBAN] thanks", "iban"),
        ("pay DE89370400440532013000 ASAP", "pay [IBAN] ASAP", "iban"),
        ("call +44 20 7946 0958", "call [PHONE]", "phone"),
        ("call (555) 123-4567 tonight", "call [PHONE] tonight", "phone"),
        ("mobile 138 1234 5678", "mobile [PHONE]", "phone"),
        ("mobile +86 13812345678", "mobile [PHONE]", "phone"),
        ("Callback 212-555-0142.", "Callback [PHONE].", "phone"),
        ("ring 07700 900123", "ring [PHONE]", "phone"),
    ],
)
def test_detects_and_replaces_with_typed_placeholder(text: str, expected: str, kind: str) -> None:
    result = scrub(text)
    assert result.text == expected
    assert result.counts == {k: (1 if k == kind else 0) for k in PII_TYPES}


@pytest.mark.parametrize(
    "text",
    [
        "Card 4111 1111 1111 1112 declined",  # fails Luhn
        "IBAN GB83 WEST 1234 5698 7654 32",  # wrong check digits
        "Ref 110105194912310021",  # 18 digits, wrong MOD 11-2 check character
        "ID 11010519491331002X",  # month 13: not a date, whatever the check says
        "SSN 000-12-3456",  # area 000 is never issued
        "SSN 666-12-3456",
        "seen on 2023-10-12 at 10:30",
        "BP 120/80, HR 96, temp 38.5, K+ 6.8",
        "order 123456 shipped",
        "version v1.2.3, see example.com",
        "user a@b has no domain",
        "£4,500 left my account",
        "payroll for 120 staff",
    ],
)
def test_leaves_look_alikes_alone(text: str) -> None:
    result = scrub(text)
    assert result.text == text
    assert sum(result.counts.values()) == 0


def test_one_text_with_several_types_counts_each() -> None:
    text = (
        "Email a.b@example.com or call +1 212 555 0142; card 4111-1111-1111-1111, "
        "IBAN NL91ABNA0417164300, ID 11010519491231002X, second mail c@example.net"
    )
    result = scrub(text)
    assert result.counts == {"email": 2, "phone": 1, "national_id": 1, "card": 1, "iban": 1}
    assert result.text == (
        "Email [EMAIL] or call [PHONE]; card [CARD], IBAN [IBAN], ID [NATIONAL_ID], second mail [EMAIL]"
    )


def test_scrubbing_is_idempotent_and_texts_are_summed() -> None:
    texts = ["SSN 123-45-6789", "mail x@example.com", "nothing here"]
    scrubbed, counts = scrub_texts(texts)
    assert counts == {"email": 1, "phone": 0, "national_id": 1, "card": 0, "iban": 0}
    again, counts_again = scrub_texts(scrubbed)
    assert again == scrubbed
    assert sum(counts_again.values()) == 0


def test_checksums_known_answers() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert not luhn_valid("4111-1111")
    assert iban_valid("GB82WEST12345698765432") and iban_valid("DE89370400440532013000")
    assert not iban_valid("GB82WEST1234569876543")  # one character short for GB
    # The published example of GB 11643: 11010519491231002X.
    assert cn_resident_id_check_char("11010519491231002") == "X"
    assert cn_resident_id_valid("11010519491231002X")
    assert not cn_resident_id_valid("01010519491231002X")  # region cannot start with 0


@pytest.mark.parametrize("party", PARTIES)
def test_demo_data_pii_is_found_and_none_survives(party: str) -> None:
    records = generate_records(party, 400, seed=3)
    scrubbed, counts = scrub_texts(str(r["text"]) for r in records)
    assert sum(counts.values()) > 200  # about 70% of records carry one or two identifiers
    for text in scrubbed:
        assert "@" not in text
        assert not re.search(r"\d(?:[ -]?\d){6,}", text), text  # no 7+ digit run is left
