"""Personal data masking for text bound for the cloud tier.

Card numbers (Luhn-checked), IBANs (mod-97-checked), e-mail addresses (internationalised ones
too), phone numbers (local ``555-1234`` ones too), IP addresses, UK National Insurance numbers,
passport, account and order numbers, dates of birth, street addresses and postcodes, and names
introduced as such ("my name is ...") are replaced by ``<ENTITY>`` placeholders named as Presidio
names its entities, so a cloud model sees the shape of the message but none of the data. Any
other run of six or more digits (nine or more with spaces, dashes, dots or brackets between
them) is masked too: an unchecked number may still be an account number, and an over-masked
digit costs a classifier nothing.

Text is normalised before it is matched: NFKC (full-width digits and letters, no-break, thin and
ideographic spaces), every dash as ``-`` and invisible format characters (zero-width space, soft
hyphen) removed; the masked text is the normalised one.

The default engine is plain regular expressions, compiled once. ``privacy.engine: presidio``
(the ``presidio`` extra) adds Presidio's analyzer over a spaCy pipeline, which finds the names
and addresses no pattern can; `bench/privacy.py` measures what it costs. Masking is idempotent:
placeholders match no pattern.
"""

from __future__ import annotations

import ipaddress
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache

from edgeroute.config import PrivacyConfig

# Between the digits of a card number: a space, or a dash, slash, dot or comma with a space
# either side or none, or nothing.
_SEP = r"(?: ?[\-/.,] ?| )?"
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATE = (
    r"(?:\d{1,4}[./\- ]\d{1,2}[./\- ]\d{1,4}"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH},?\s+\d{{4}}"
    rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}})"
)
_STREET = (
    r"(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Boulevard|Blvd|Way|Close|Court|Ct|Place|Pl"
    r"|Terrace|Crescent|Square|Sq|Parkway|Pkwy|Highway|Hwy|Gardens|Grove|Row|Mews|Walk|Hill)"
)


@cache
def _normal_forms() -> dict[int, str | None]:
    """Every dash (and the minus sign) as ``-``; invisible format characters removed."""
    table: dict[int, str | None] = {0x2212: "-"}
    for point in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(point))
        if category == "Pd" and point != 0x2D:
            table[point] = "-"
        elif category == "Cf":
            table[point] = None
    return table


def normalize(text: str) -> str:
    """``text`` as the patterns read it: NFKC, dashes as ``-``, no invisible format characters."""
    while True:  # removing a format character can let NFKC compose what it separated
        normal = unicodedata.normalize("NFKC", text.translate(_normal_forms()))
        if normal == text:
            return text
        text = normal


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment card number satisfies."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: move the first four characters to the end, letters to numbers, mod 97."""
    compact = iban.replace(" ", "").upper()
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _card_valid(card: str) -> bool:
    return luhn_valid(re.sub(r"\D", "", card))


def _ip_valid(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Entity:
    """One kind of personal data: its placeholder name, pattern and optional checksum."""

    name: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None
    group: int = 0
    # On a failed check, try the match cut short at each space in it, longest first: the words
    # after an IBAN can fit its pattern of groups ("ES91 2100 0418 4502 0005 1332 from"), and
    # other digits can follow a card.
    cut_at_spaces: bool = False

    def spans(self, text: str, start: int = 0, end: int | None = None) -> Iterable[tuple[int, int]]:
        """Matches within ``text[start:end]``; the end of that range counts as the end of text.

        A match whose check fails is tried shorter (``cut_at_spaces``); failing still, the search
        goes on from its next character, not past it: a card after other digits starts there.
        """
        end = len(text) if end is None else end
        position = start
        while (match := self.pattern.search(text, position, end)) is not None:
            span = next(
                (
                    candidate.span(self.group)
                    for candidate in self._candidates(text, match)
                    if candidate and (self.check is None or self.check(candidate.group(self.group)))
                ),
                None,
            )
            if span is not None:
                yield span
            position = max(span[1] if span else 0, match.start() + 1)

    def _candidates(self, text: str, match: re.Match[str]) -> Iterator[re.Match[str] | None]:
        yield match
        if self.cut_at_spaces:
            for cut in range(match.end() - 1, match.start(), -1):
                if text[cut] == " ":
                    yield self.pattern.fullmatch(text, match.start(), cut)


def _after(keywords: str, value: str) -> re.Pattern[str]:
    """``value`` (group 1) after one of ``keywords``, then perhaps ``number``, ``no.`` or ``id``,
    and ``is``, ``:`` or ``#``."""
    return re.compile(
        rf"\b(?:{keywords})\b(?:\s+(?:number|no\.?|id))?\s*(?:is\s+|:\s*)?#?\s*({value})", re.IGNORECASE
    )


# Order matters where patterns overlap: the more specific, checked entities claim text first.
ENTITIES: tuple[Entity, ...] = (
    Entity(
        "EMAIL_ADDRESS",
        re.compile(r"[\w.!#$%&'*+/=?^`{|}~\-]+@[\w\-]+(?:\.[\w\-]+)*\.(?:xn--[a-z0-9\-]+|[^\W\d_]{2,})\b"),
    ),
    Entity(
        "IBAN_CODE",
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", re.IGNORECASE),
        iban_valid,
        cut_at_spaces=True,
    ),
    Entity(
        "CREDIT_CARD",
        re.compile(rf"(?<![\d\w])\d(?:{_SEP}\d){{12,18}}(?![\d\w])"),
        _card_valid,
        cut_at_spaces=True,
    ),
    Entity(
        "IP_ADDRESS",
        re.compile(
            r"(?<![\w.:])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)"
            r"|(?<![\w:])(?=[:.]*[0-9A-Fa-f])(?:[0-9A-Fa-f]{0,4}:){2,7}"
            r"(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4}|(?<=::))(?![\w]|:[0-9A-Fa-f:])"
        ),
        _ip_valid,
    ),
    Entity(
        "UK_NINO",
        re.compile(
            r"\b(?!(?:bg|gb|kn|nk|nt|tn|zz)[ \-]?\d)[a-z]{2}(?:[ \-]?\d{2}){3}[ \-]?[a-d]\b",
            re.IGNORECASE,
        ),
    ),
    Entity(
        "PHONE_NUMBER",
        re.compile(
            r"(?<![\w+])(?<!\d[ \-])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])"
            r"\d{3,4}[ .\-]?\d{3,4}(?![\w]|[ \-]\d)"
        ),
    ),
    Entity("DATE_TIME", _after(r"date of birth|birth ?date|d\.?o\.?b\.?|born(?:\s+on)?", _DATE), group=1),
    Entity(
        "PASSPORT",
        _after(
            r"passport",
            r"(?=[A-Z]{0,2}[ \-]?\d)[A-Z]{0,2}[ \-]?\d(?:[ \-]?\d){5,9}\b|(?=[A-Z]*\d)[A-Z0-9]{6,12}\b",
        ),
        group=1,
    ),
    Entity("ORDER_NUMBER", re.compile(r"#\d{4,}\b|\bORD-[A-Z0-9]{4,}\b", re.IGNORECASE)),
    Entity(
        "ORDER_NUMBER",
        _after(r"order|invoice|ticket|tracking|reference|ref", r"(?=[A-Z\-#]*\d)[A-Z0-9][A-Z0-9\-]{3,}\b"),
        group=1,
    ),
    Entity(
        "ACCOUNT_NUMBER",
        _after(r"account|acct|a/c|customer|member|membership", r"(?=[A-Z\-]*\d)[A-Z0-9][A-Z0-9\-]{4,}\b"),
        group=1,
    ),
    # A local number, no area code: after the kinds above, which claim "order 555-1234" first.
    # Two more digits before or after make it part of a longer number, masked as NUMBER below.
    Entity("PHONE_NUMBER", re.compile(r"(?<![\w+\-.])(?<!\d\d[ .\-])\d{3}[ .\-]\d{4}(?![\w]|[ .\-]\d\d)")),
    Entity(
        "LOCATION",
        re.compile(
            rf"\b\d{{1,5}}[A-Za-z]?,?\s+(?:[A-Z][\w'\-]*\s+){{1,4}}{_STREET}\b\.?"
            r"|\b[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}\b"
        ),
    ),
    Entity(
        "PERSON",
        re.compile(
            r"\b(?:[Mm]y name is|[Mm]y name's|[Nn]ame\s*:)\s+([A-Z][\w'\-]+(?:\s+[A-Z][\w'\-]+){0,2})"
        ),
        group=1,
    ),
    # With phone punctuation: a phone number refused because digits come before or after it
    # ("(02) 9374 4000 2") is still masked here.
    Entity("NUMBER", re.compile(r"\d(?:[ .\-()]{0,2}\d){8,}|\d{6,}")),
)


Spans = list[tuple[int, int, str]]


class PrivacyError(RuntimeError):
    """A masking engine that cannot be set up (its extra is not installed)."""


def find(text: str) -> Spans:
    """Non-overlapping ``(start, end, entity)`` spans of personal data in normalised ``text``."""
    taken: Spans = []
    for entity in ENTITIES:
        # Each kind is looked for in the text the kinds before it left free, so that a number
        # beside an IBAN is still found, not dropped with a longer match that overlapped it.
        for start, end in _free(taken, len(text)):
            taken += [(s, e, entity.name) for s, e in entity.spans(text, start, end)]
    return sorted(taken)


def _free(taken: Spans, length: int) -> list[tuple[int, int]]:
    """The ranges of ``[0, length)`` outside the spans ``taken``."""
    free, last = [], 0
    for start, end, _ in sorted(taken):
        if start > last:
            free.append((last, start))
        last = max(last, end)
    return [*free, (last, length)] if last < length else free


# How Presidio reads spaCy's labels (its conf/default.yaml): FAC (a building, a street) is a place.
_SPACY_LABELS = {"PERSON": "PERSON", "NORP": "NRP", "FAC": "LOCATION", "LOC": "LOCATION", "GPE": "LOCATION"}


def presidio_finder(config: PrivacyConfig) -> Callable[[str], Spans]:
    """`find`, then what Presidio's spaCy recognizer over the ``config.model`` pipeline finds in
    the text left free (names, places): the ``presidio`` engine."""
    try:
        import spacy
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import SpacyRecognizer
    except ImportError as exc:
        raise PrivacyError(
            f"privacy.engine presidio needs the 'presidio' extra: pip install 'edgeroute[presidio]' ({exc})"
        ) from None
    if not spacy.util.is_package(config.model):  # Presidio would download it
        raise PrivacyError(
            f"privacy.model {config.model!r} is not an installed spaCy pipeline "
            f"(installed: {', '.join(spacy.util.get_installed_models()) or 'none'})"
        )
    labels = NerModelConfiguration(
        model_to_presidio_entity_mapping=_SPACY_LABELS,
        labels_to_ignore=[
            label for label in spacy.load(config.model).get_pipe("ner").labels if label not in _SPACY_LABELS
        ],
    )
    engine = SpacyNlpEngine(
        models=[{"lang_code": "en", "model_name": config.model}], ner_model_configuration=labels
    )
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.add_recognizer(
        SpacyRecognizer(supported_language="en", supported_entities=list(config.entities))
    )
    analyzer = AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])
    entities = list(config.entities)

    def find_with_presidio(text: str) -> Spans:
        taken = find(text)
        found = analyzer.analyze(text, language="en", entities=entities, score_threshold=config.min_score)
        free = _free(taken, len(text))
        for result in found:  # cut to the free text: a name that runs into a postcode is still masked
            taken += [
                (max(start, result.start), min(end, result.end), result.entity_type)
                for start, end in free
                if max(start, result.start) < min(end, result.end)
            ]
        return sorted(set(taken))

    return find_with_presidio


_finder: Callable[[str], Spans] = find


def configure(config: PrivacyConfig) -> None:
    """Mask with ``config.engine`` from now on, in this process (`PrivacyError` if it cannot)."""
    global _finder
    _finder = find if config.engine == "regex" else presidio_finder(config)


def mask(text: str, finder: Callable[[str], Spans] | None = None) -> str:
    """``text``, normalised, with every span of personal data replaced by ``<ENTITY>``: what
    ``finder`` finds, by default the configured engine (`configure`; else `find`)."""
    text = normalize(text)
    spans = (finder or _finder)(text)
    if not spans:
        return text
    pieces, last = [], 0
    for start, end, name in spans:
        pieces += [text[last:start], f"<{name}>"]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)
