"""Synthetic local records for demos and tests: two hospitals and a bank.

All three parties label the same question -- does this message need urgent human follow-up
(``label`` 1) or is it routine (``label`` 0)? -- but they write about different things:

- ``hospital-a``: emergency department / cardiology notes (US; SSNs, US phone numbers, e-mail);
- ``hospital-b``: oncology, psychiatry and paediatrics notes (China; resident IDs, +86 phones);
- ``bank``: customer messages (UK/EU; card numbers, IBANs, UK phones, NI numbers, e-mail).

What makes the task worth federating: each party's urgent and routine messages use cue phrases of
its own domain, and only a small shared pool is common to the hospitals. A model trained on one
party's records learns its own cues well and the others' poorly. Worse for it, a fifth of each
party's routine messages borrow another party's urgent words ("my son had a seizure at school, I
need a letter for the insurance" to the bank, "wallet stolen in the waiting room" in a hospital),
as real messages do: a model of one party's cues calls them urgent, where a model that has seen
every party's records learns in which context a word signals urgency. So a model trained on all
three (federated) beats the best single party on the union of the held-out splits. What keeps it from
being trivial: "urgent"-sounding words appear in routine messages too (negated findings, customers
who write URGENT about a statement), generic urgency markers carry no label information, and a
small fraction of labels is flipped, as in real triage data.

Every record has ``id``, ``party``, ``split`` (``train`` or ``heldout``; ``heldout_fraction`` of
the records, 20% by default), ``text`` and ``label``. The same ``(party, records, seed)`` always
gives the same file. PII (with valid checksums) is embedded for the scrubber to find.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from fedmask.durable import write_text_atomic
from fedmask.participant.pii import IBAN_LENGTHS, cn_resident_id_check_char, luhn_valid

PARTIES: tuple[str, ...] = ("hospital-a", "hospital-b", "bank")
LABEL_NAMES: tuple[str, ...] = ("routine", "urgent")  # label 0, label 1


@dataclass(frozen=True)
class _PartyStyle:
    urgent_rate: float  # share of label-1 records before label noise
    openers: tuple[str, ...]
    contexts: tuple[str, ...]
    urgent: tuple[str, ...]
    routine: tuple[str, ...]
    hard_negatives: tuple[str, ...]  # routine, but mention something that sounds alarming
    # Routine here, but in another party's urgent words (the second item): a model that learnt
    # only that party's cues calls them urgent.
    false_friends: tuple[tuple[str, str], ...]
    pii: tuple[str, ...]  # templates with {ssn} {phone} {email} ... slots


# Cue phrases shared by both hospitals (a small overlap in the medical domain).
_SHARED_MEDICAL_URGENT = (
    "possible sepsis, temp {fever} and HR {hr_high}",
    "fall with head strike while on apixaban",
    "new confusion since this morning per family",
)
_SHARED_MEDICAL_ROUTINE = (
    "annual flu vaccine given today",
    "requests copy of recent blood results",
    "parking validation question at reception",
)

_STYLES: dict[str, _PartyStyle] = {
    "hospital-a": _PartyStyle(
        urgent_rate=0.35,
        openers=(
            "ED triage note:",
            "Cardiology ward, bed {bed}:",
            "Telemetry nurse:",
            "Night handover:",
            "Phone triage:",
            "Chest pain clinic:",
        ),
        contexts=(
            "{age}M, known CAD.",
            "{age}F, HTN and diabetes.",
            "{age}M post PCI {months} months ago.",
            "{age}F, seen at {time}.",
            "{age}M on warfarin.",
            "{age}F, BP {bp}.",
        ),
        urgent=(
            "troponin rising on repeat draw",
            "new ST elevation in V2 to V4",
            "chest pain radiating to left arm and jaw",
            "K+ {k_high} on latest panel",
            "BP {bp_low} and dropping despite fluids",
            "new AF with rate {hr_high}",
            "syncope while walking, hit the floor",
            "sudden slurred speech and facial droop",
            "sats {sats_low}% on room air",
            "lactate {lactate} after second bolus",
            "pacemaker site red, hot and oozing pus",
            "crushing central chest pain at rest",
        ),
        routine=(
            "stable overnight, obs within normal limits",
            "requests repeat prescription for atorvastatin",
            "follow-up echo booked in {weeks} weeks",
            "wound healing well, dressing changed",
            "INR {inr} in range, continue current dose",
            "discharge letter sent to primary care",
            "holter results normal, no action",
            "cardiac rehab class moved to Tuesday",
            "asks whether to take metoprolol with food",
            "lipid panel improved since last visit",
            "stress test scheduled for next month",
            "needs sick note for employer",
        ),
        hard_negatives=(
            "denies chest pain or shortness of breath",
            "no ST changes on today's ECG",
            "troponin negative x2, reassured",
            "K+ back to {k_norm} after treatment",
            "syncope last year, none since",
        ),
        false_friends=(
            ("wallet stolen in the waiting room, security has the report", "stolen"),
            ("reports a caller posing as the pharmacy, advised to ignore it", "caller posing as"),
            ("card declined at the parking machine, paid at reception", "card"),
            ("had a seizure in childhood, none as an adult", "seizure"),
            ("leg weakness after the long flight has settled", "leg weakness"),
        ),
        pii=(
            "SSN {ssn}.",
            "Callback {us_phone}.",
            "Daughter's number {us_phone}.",
            "Portal message from {email}.",
            "Wife: {us_phone}, {email}.",
        ),
    ),
    "hospital-b": _PartyStyle(
        urgent_rate=0.22,
        openers=(
            "Oncology day unit:",
            "Psychiatry liaison:",
            "Paediatric ward round:",
            "Outpatient call:",
            "Chemo hotline:",
            "Ward {bed} note:",
        ),
        contexts=(
            "{age}F on cycle {cycle} of FOLFOX.",
            "{age}M with bipolar disorder.",
            "{age_child}yo, mother present.",
            "{age}F, breast cancer, on tamoxifen.",
            "{age}M with lung mets.",
            "{age_child}yo with asthma.",
        ),
        urgent=(
            "temp {fever} five days after chemo, ANC 0.3",
            "voiced suicidal thoughts with a plan tonight",
            "infant floppy and refusing feeds",
            "new leg weakness, known spinal metastases",
            "vomiting blood since this morning",
            "non-blanching rash with fever",
            "stopped lithium, not sleeping, very agitated",
            "platelets {plt_low} with bleeding gums",
            "seizure lasting over five minutes",
            "hearing voices telling her to hurt the baby",
            "swollen face and arm, port side",
            "child wheezing, unable to finish sentences",
        ),
        routine=(
            "tolerating cycle {cycle} well",
            "mood stable, continue sertraline",
            "growth on the 50th centile",
            "requests letter for school absence",
            "port flushed, no issues",
            "appointment moved to Thursday",
            "pre-chemo bloods all in range",
            "vaccinations up to date",
            "wig voucher requested",
            "sleep hygiene advice given",
            "inhaler technique reviewed, good",
            "dietitian referral for weight gain",
        ),
        hard_negatives=(
            "no suicidal ideation on direct questioning",
            "afebrile since discharge",
            "rash blanching and settling",
            "seizure free for two years",
            "no bleeding, platelets {plt_norm}",
        ),
        false_friends=(
            ("chest pain clinic letter from {months} months ago filed in the notes", "chest pain"),
            ("asks about a fraud warning letter from the billing office", "fraud"),
            ("slurred speech after the dental anaesthetic has worn off", "slurred speech"),
            ("the transfer of her records to the new GP bounced, resent today", "transfer"),
            ("new AF on last year's holter, already anticoagulated", "new af"),
        ),
        pii=(
            "ID {cn_id}.",
            "Contact {cn_phone}.",
            "Family email {email}.",
            "Mother reachable on {cn_phone}.",
            "Patient ID {cn_id}, phone {cn_phone}.",
        ),
    ),
    "bank": _PartyStyle(
        urgent_rate=0.45,
        openers=(
            "Hi,",
            "Hello team,",
            "Dear support,",
            "Good morning,",
            "To whom it may concern,",
            "Chat message:",
        ),
        contexts=(
            "I have banked with you for {years} years.",
            "This is about my current account.",
            "Writing for my business account.",
            "I am abroad until {month}.",
            "My partner and I share this account.",
            "I tried the app first.",
        ),
        urgent=(
            "my card was stolen and there are payments I did not make",
            "someone changed my password and moved money out",
            "my phone lost signal after a SIM swap text",
            "my father sent his savings to a caller posing as you",
            "I gave a one-time code to someone on the phone",
            "payroll for {staff} staff has not gone out today",
            "an unknown device logged into my account at {night_time}",
            "{amount} left my account to a payee I never added",
            "the house purchase completes tomorrow and the transfer bounced",
            "I think my account has been taken over",
            "direct debits I never set up are draining my account",
            "a courier came to collect my card, I think it was fraud",
        ),
        routine=(
            "please update my postal address",
            "how do I order a new cheque book",
            "can I get a copy of last year's statement",
            "what is the interest rate on the saver account",
            "I'd like to raise my card limit next month",
            "how do I set up a standing order",
            "thanks for sorting my query last week",
            "when does the branch open on Saturdays",
            "can you send me a paper statement",
            "I want to add my partner as a joint holder",
            "how do I change my nominated account",
            "please close my old savings pot",
        ),
        hard_negatives=(
            "my card was stolen last year, this is only about my new address",
            "no fraud, I just want to know the exchange rate",
            "false alarm earlier, the payment was mine",
            "the transfer went through fine, please send a receipt",
            "nothing suspicious, just checking my limit",
        ),
        false_friends=(
            ("I had crushing chest pain in the spring and was off work, can I pause my loan repayments", "chest pain"),
            ("my wife's platelets were low after chemo, so I run the account now, please add me", "platelets"),
            (
                "my father had a fall with head strike last year and lives with me, please update his address",
                "head strike",
            ),
            ("the parking charge at the chemo unit was taken twice, please refund one", "chemo"),
            ("my son had a seizure at school, I need a letter for the insurance", "seizure"),
        ),
        pii=(
            "Card {card}.",
            "IBAN {iban}.",
            "Call me on {uk_phone}.",
            "Email {email}.",
            "NI number {nino}.",
            "Reach me at {email} or {uk_phone}.",
        ),
    ),
}

# Generic markers carry no label information: patients and customers mark routine
# requests urgent, and staff leave urgent ones unmarked.
_MARKERS = ("URGENT:", "asap please.", "Please advise.", "No rush.", "Thanks.", "FYI.", "!!")

_EMAIL_NAMES = (
    "jmiller",
    "li.wei",
    "a.kowalski",
    "sam.patel",
    "chen88",
    "m.garcia",
    "olu.ade",
    "k.novak",
    "r.smith",
    "zhang.min",
    "e.brown",
    "h.yamada",
    "d.okafor",
    "lucia.r",
    "t.nguyen",
    "p.dubois",
)
_EMAIL_DOMAINS = ("example.com", "mail.example.org", "example.net", "inbox.example.co.uk")
_CN_REGIONS = ("110105", "310104", "440305", "510107", "330106", "420102", "320102", "610113")
_CARD_PREFIXES = ("4", "51", "53", "55", "2221", "34", "37", "6011", "62")
_IBAN_COUNTRIES = ("GB", "DE", "FR", "NL", "ES", "IE")


# --------------------------------------------------------------------------- valid PII


def _card(rng: random.Random) -> str:
    prefix = rng.choice(_CARD_PREFIXES)
    length = 15 if prefix in ("34", "37") else 16
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    check = next(d for d in "0123456789" if luhn_valid(body + d))
    number = body + check
    if length == 15:
        return f"{number[:4]} {number[4:10]} {number[10:]}"
    style = rng.random()
    if style < 0.4:
        return " ".join(number[i : i + 4] for i in range(0, 16, 4))
    if style < 0.7:
        return "-".join(number[i : i + 4] for i in range(0, 16, 4))
    return number


def _iban(rng: random.Random) -> str:
    country = rng.choice(_IBAN_COUNTRIES)
    length = IBAN_LENGTHS[country]
    if country in ("GB", "IE", "NL"):
        letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(4))
        bban = letters + "".join(rng.choice("0123456789") for _ in range(length - 8))
    else:
        bban = "".join(rng.choice("0123456789") for _ in range(length - 4))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    iban = f"{country}{check:02d}{bban}"
    if rng.random() < 0.6:
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


def _cn_id(rng: random.Random) -> str:
    year = rng.randint(1940, 2020)
    month = rng.randint(1, 12)
    day = rng.randint(1, 28)
    first17 = f"{rng.choice(_CN_REGIONS)}{year:04d}{month:02d}{day:02d}{rng.randint(0, 999):03d}"
    return first17 + cn_resident_id_check_char(first17)


def _ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _nino(rng: random.Random) -> str:
    first = rng.choice("ABCEGHJKLMNPRSTWXYZ")
    second = rng.choice("ABCEGHJKLMNPRSTWXYZ")
    if first + second in ("BG", "GB", "NK", "KN", "TN", "NT", "ZZ"):
        first, second = "A", "B"
    digits = "".join(rng.choice("0123456789") for _ in range(6))
    return f"{first}{second} {digits[:2]} {digits[2:4]} {digits[4:]} {rng.choice('ABCD')}"


def _us_phone(rng: random.Random) -> str:
    area, line = rng.randint(201, 989), rng.randint(100, 199)
    return rng.choice((f"({area}) 555-0{line}", f"{area}-555-0{line}", f"+1 {area} 555 0{line}"))


def _cn_phone(rng: random.Random) -> str:
    prefix = rng.choice(("138", "139", "150", "186", "177"))
    mid, end = rng.randint(1000, 9999), rng.randint(1000, 9999)
    return rng.choice((f"{prefix} {mid} {end}", f"+86 {prefix} {mid} {end}", f"{prefix}{mid}{end}"))


def _uk_phone(rng: random.Random) -> str:
    tail = rng.randint(100, 999)
    return rng.choice((f"07700 900{tail}", f"+44 7700 900{tail}", f"020 7946 0{tail}"))


def _email(rng: random.Random) -> str:
    return f"{rng.choice(_EMAIL_NAMES)}{rng.randint(1, 99)}@{rng.choice(_EMAIL_DOMAINS)}"


def _slots(rng: random.Random) -> dict[str, str]:
    # Computed lazily by str.format only for the slots a template names; cheap enough to
    # build every time and keeps the stream of random draws independent of the template.
    return {
        "bed": str(rng.randint(1, 30)),
        "age": str(rng.randint(24, 91)),
        "age_child": str(rng.randint(1, 15)),
        "months": str(rng.randint(2, 30)),
        "time": f"{rng.randint(0, 23):02d}:{rng.choice(('00', '15', '30', '45'))}",
        "bp": f"{rng.randint(110, 165)}/{rng.randint(65, 98)}",
        "bp_low": f"{rng.randint(68, 84)}/{rng.randint(35, 48)}",
        "k_high": f"{rng.uniform(6.2, 7.4):.1f}",
        "k_norm": f"{rng.uniform(3.8, 4.9):.1f}",
        "hr_high": str(rng.randint(128, 175)),
        "sats_low": str(rng.randint(78, 88)),
        "lactate": f"{rng.uniform(4.1, 7.9):.1f}",
        "inr": f"{rng.uniform(2.0, 2.9):.1f}",
        "weeks": str(rng.randint(2, 12)),
        "fever": f"{rng.uniform(38.3, 39.9):.1f}",
        "cycle": str(rng.randint(1, 8)),
        "plt_low": str(rng.randint(4, 14)),
        "plt_norm": str(rng.randint(160, 380)),
        "years": str(rng.randint(2, 30)),
        "month": rng.choice(("March", "June", "August", "October")),
        "staff": str(rng.randint(8, 120)),
        "night_time": f"0{rng.randint(1, 4)}:{rng.randint(10, 59)}",
        "amount": f"£{rng.randint(400, 9500):,}",
        "ssn": _ssn(rng),
        "us_phone": _us_phone(rng),
        "cn_phone": _cn_phone(rng),
        "uk_phone": _uk_phone(rng),
        "email": _email(rng),
        "cn_id": _cn_id(rng),
        "card": _card(rng),
        "iban": _iban(rng),
        "nino": _nino(rng),
    }


# --------------------------------------------------------------------------- records


def _sentence(phrase: str) -> str:
    return phrase[0].upper() + phrase[1:] + "."


def _message(rng: random.Random, party: str, label: int) -> str:
    style = _STYLES[party]
    medical = party.startswith("hospital")
    if label == 1:
        pool = style.urgent + (_SHARED_MEDICAL_URGENT if medical else ())
        cue = rng.choice(pool)
    elif (draw := rng.random()) < 0.2:
        cue = rng.choice(style.hard_negatives)
    elif draw < 0.4:
        cue, _borrowed = rng.choice(style.false_friends)
    else:
        pool = style.routine + (_SHARED_MEDICAL_ROUTINE if medical else ())
        cue = rng.choice(pool)
    parts = [rng.choice(style.openers), rng.choice(style.contexts), _sentence(cue)]
    if rng.random() < 0.35:
        # A second, routine remark: urgent messages also talk about ordinary things.
        parts.append(_sentence(rng.choice(style.routine)))
        if rng.random() < 0.5:
            parts[-2], parts[-1] = parts[-1], parts[-2]
    if rng.random() < 0.3:
        marker = rng.choice(_MARKERS)
        if marker.endswith(":"):
            parts.insert(0, marker)
        else:
            parts.append(marker)
    if rng.random() < 0.7:
        parts.append(rng.choice(style.pii))
    return " ".join(parts).format(**_slots(rng))


class DemoRecord(TypedDict):
    """One generated record, as ``write_records`` writes it."""

    id: str
    party: str
    split: str  # "train" or "heldout"
    text: str
    label: int  # 1: needs urgent human follow-up


def generate_records(
    party: str,
    n: int,
    *,
    seed: int = 0,
    heldout_fraction: float = 0.2,
    label_noise: float = 0.04,
) -> list[DemoRecord]:
    """``n`` records for ``party``; the same arguments always give the same records."""
    if party not in _STYLES:
        raise ValueError(f"unknown party {party!r}; expected one of {PARTIES}")
    if n < 2:
        raise ValueError(f"need at least 2 records (one train, one held out), got {n}")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if not 0.0 <= label_noise < 0.5:
        raise ValueError(f"label_noise must be in [0, 0.5), got {label_noise}")
    # A string seed is hashed with SHA-512 by `random`, so it is stable across processes.
    rng = random.Random(f"fedmask-demo:{party}:{seed}")
    n_heldout = min(n - 1, max(1, round(n * heldout_fraction)))
    heldout = set(rng.sample(range(n), n_heldout))
    style = _STYLES[party]
    records: list[DemoRecord] = []
    for index in range(n):
        label = 1 if rng.random() < style.urgent_rate else 0
        text = _message(rng, party, label)
        if rng.random() < label_noise:
            label = 1 - label
        records.append(
            {
                "id": f"{party}-{index:06d}",
                "party": party,
                "split": "heldout" if index in heldout else "train",
                "text": text,
                "label": label,
            }
        )
    return records


# What a note goes on to say, by who wrote it and whether it was urgent: the continuation a causal
# LM learns. The phrasing is each party's own, so a model of one party's notes continues the
# others' poorly (the same non-IID split as the classification task).
_PLANS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "hospital-a": (
        ("repeat ECG in the morning clinic", "continue current meds, review at next visit", "discharge with GP letter"),
        ("page the cardiology registrar now", "activate the cath lab pathway", "move to resus, troponin stat"),
    ),
    "hospital-b": (
        ("keep the next oncology clinic slot", "routine follow-up with the ward pharmacist", "send the letter home"),
        (
            "call the on-call psychiatrist now",
            "start the sepsis bundle within the hour",
            "paediatric team to review stat",
        ),
    ),
    "bank": (
        ("reply within five working days", "send the standard statement letter", "close the ticket after reply"),
        ("freeze the card and call the customer", "escalate to the fraud desk now", "vulnerable customer team today"),
    ),
}


def generate_notes(party: str, n: int, *, seed: int = 0, heldout_fraction: float = 0.2) -> list[dict[str, str]]:
    """``n`` notes for ``party`` for causal-LM training: a message of the classification task (PII
    included) followed by ``Plan:`` and what was done, which depends on the party and on the
    message's urgency. Records have ``id``, ``party``, ``split`` and ``text`` (no label)."""
    records = generate_records(party, n, seed=seed, heldout_fraction=heldout_fraction, label_noise=0.0)
    rng = random.Random(f"fedmask-notes:{party}:{seed}")
    routine, urgent = _PLANS[party]
    notes = []
    for record in records:
        plan = rng.choice(urgent if record["label"] else routine)
        text = f"{record['text']} Plan: {plan}."
        notes.append({"id": record["id"], "party": record["party"], "split": record["split"], "text": text})
    return notes


def write_records(records: Iterable[Mapping[str, object]], path: str | Path) -> Path:
    """Write records as JSONL (one object per line) or, for a ``.csv`` path, as CSV with a header
    row: the two formats ``participant train`` reads. UTF-8 either way."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".csv"):
        raise ValueError(f"{path}: records are written as .jsonl or .csv, not {suffix or 'a file without a suffix'!r}")
    rows = list(records)
    handle = io.StringIO(newline="")
    if suffix == ".csv":
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["id", "text"])
        writer.writeheader()
        writer.writerows(rows)
    else:
        for record in rows:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    write_text_atomic(path, handle.getvalue())
    return path
