"""Personal data masking for text bound for the cloud tier.

Card numbers (Luhn-checked) and IBANs (mod-97-checked), whatever separates their groups,
e-mail addresses (internationalised or spelt out: ``jane dot doe at example dot com``), phone
numbers (local ``555-1234`` ones too), IP addresses, UK National Insurance numbers, passport,
account and order numbers, dates of birth, street addresses and postcodes (UK, US, Canadian and
continental European), and names introduced as such ("my name is ...", in any case; "I'm ...",
a greeting or a sign-off) are replaced by ``<ENTITY>`` placeholders named as Presidio names its
entities, so a cloud model sees the shape of the message but none of the data. Any
other run of six or more digits (nine or more with up to four characters that are neither
letters nor digits between them) is masked too: an unchecked number may still be an account
number, and an over-masked digit costs a classifier nothing. So is a run of seven digits or
more at the very start or end of a text: texts go to the cloud together, and a card number split
across two of them would otherwise reach it whole. Of its 13 to 19 digits, the larger piece
has seven or more and is masked; at most six reach the cloud, no more than PCI DSS lets a
receipt show. Each text is masked alone, so its masked form, and the cloud's answer to it,
never depend on the texts sent with it.

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

# Numbers are read separator-agnostic: between two groups of digits, up to four characters
# that are neither letters nor digits (any space, tab, line break, NUL, dash, dot, bullet, "_").
_GAP = r"[\W_]{0,4}"
_ALNUM = r"[^\W_]"
_US_STATE_CODES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|"
    "NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY"
)
_US_STATES = (
    "alabama|alaska|arizona|arkansas|california|colorado|connecticut|delaware|florida|georgia|"
    "hawaii|idaho|illinois|indiana|iowa|kansas|kentucky|louisiana|maine|maryland|massachusetts|"
    "michigan|minnesota|mississippi|missouri|montana|nebraska|nevada|new hampshire|new jersey|"
    "new mexico|new york|north carolina|north dakota|ohio|oklahoma|oregon|pennsylvania|"
    "rhode island|south carolina|south dakota|tennessee|texas|utah|vermont|virginia|washington|"
    "west virginia|wisconsin|wyoming"
)
_STREET_LOWER = "street|avenue|boulevard|lane|drive|terrace|crescent"
_STREET_BEFORE = "rue|avenue|boulevard|chemin|allée|allee|impasse|quai|place"
_STREET_SUFFIX = "straße|strasse|str\\.|weg|gasse|platz|allee|ring|damm|laan|straat|gracht|vej|gatan"
_STREET_FIRST = "via|viale|piazza|calle|avenida|rua|carrer|plaza|ulica"
_SEPARATOR = re.compile(r"[\W_]")
_DIGIT_RUN = re.compile(rf"\d(?:{_GAP}\d)*")
_EDGE_DIGITS = re.compile(rf"[\W_]*(\d(?:{_GAP}\d)*)")
_DAY = re.compile(r"(?:19|20)\d\d-[01]\d-[0-3]\d|[0-3]?\d([./\-])[01]?\d\1(?:19|20)?\d\d")
# A spelt-out address ends in a common top-level domain or a country's: "at maria dot lopez at
# ..." is not one.
_TLD = "com|net|org|edu|gov|info|biz|io|app|dev|[a-z]{2}"
_SPELT_DOT = r"(?:\s+dot\s+|\s*[\[({<]dot[\])}>]\s*)"
# Words that follow "my name is" and are not a name; a name stops before one.
_NOT_NAMES = (
    "and|or|but|on|in|at|to|for|from|with|without|not|no|the|a|an|is|was|are|were|be|been|still|"
    "also|wrong|missing|spelled|spelt|incorrect|correct|different|changed|listed|shown|showing|"
    "there|here|my|your|i|it|this|that|please|now|already|so|as|by|of|if|when|has|had|have"
)
_NAME_WORD = rf"(?!(?i:{_NOT_NAMES})\b)[^\W\d_][\w'\-]*"
_TITLE_WORD = rf"(?!(?i:{_NOT_NAMES})\b)[A-Z][a-z'\-]+"
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
    compact = re.sub(r"[\W_]", "", iban).upper()
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
    # On a failed check, try the match cut short before each separator in it, longest first: the
    # words after an IBAN can fit its pattern of groups ("ES91 2100 0418 4502 0005 1332 from"),
    # and other digits can follow a card.
    cut_at_separators: bool = False
    # Not looked for inside a run of digits (separators between them) with more digits than
    # this: each digit of such a run would start a match, quadratic in its length, and the run
    # is masked whole as NUMBER anyway.
    longest_run: int | None = None

    def spans(self, text: str, start: int = 0, end: int | None = None) -> Iterable[tuple[int, int]]:
        """Matches within ``text[start:end]``; the end of that range counts as the end of text.

        A match whose check fails is tried shorter (``cut_at_separators``); failing still, the
        search goes on from its next character, not past it: a card after other digits starts
        there.
        """
        for low, high in self._searched(text, start, len(text) if end is None else end):
            position = low
            while (match := self.pattern.search(text, position, high)) is not None:
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

    def _searched(self, text: str, start: int, end: int) -> list[tuple[int, int]]:
        """``[start, end)`` less the runs of more than ``longest_run`` digits."""
        if self.longest_run is None:
            return [(start, end)]
        ranges, low = [], start
        for run in _DIGIT_RUN.finditer(text, start, end):
            if sum(c.isdigit() for c in run.group()) > self.longest_run:
                ranges.append((low, run.start()))
                low = run.end()
        return [*ranges, (low, end)]

    def _candidates(self, text: str, match: re.Match[str]) -> Iterator[re.Match[str] | None]:
        yield match
        if self.cut_at_separators:
            for cut in range(match.end() - 1, match.start(), -1):
                if _SEPARATOR.match(text, cut) and not _SEPARATOR.match(text, cut - 1):
                    yield self.pattern.fullmatch(text, match.start(), cut)


def _after(keywords: str, value: str) -> re.Pattern[str]:
    """``value`` (group 1) after one of ``keywords``, then perhaps ``number``, ``no.`` or ``id``,
    and ``is``, ``:`` or ``#``."""
    return re.compile(
        rf"\b(?:{keywords})\b(?:\s+(?:number|no\.?|id))?\s*(?:is\s+|:\s*)?#?\s*({value})", re.IGNORECASE
    )


# Order matters where patterns overlap: the more specific, checked entities claim text first.
ENTITIES: tuple[Entity, ...] = (
    # Starting only where a local part can start, so a long run of word characters is read once.
    Entity(
        "EMAIL_ADDRESS",
        re.compile(
            r"(?<![\w.!#$%&'*+/=?^`{|}~\-])[\w.!#$%&'*+/=?^`{|}~\-]{1,64}@[\w\-]+(?:\.[\w\-]+)*"
            r"\.(?:xn--[a-z0-9\-]+|[^\W\d_]{2,})\b"
        ),
    ),
    # Written out: "john dot smith at gmail dot com", "jane[at]example[dot]org".
    Entity(
        "EMAIL_ADDRESS",
        re.compile(
            rf"(?<![\w.+\-])[\w.+\-]{{1,64}}(?:{_SPELT_DOT}[\w+\-]{{1,64}}){{0,3}}"
            rf"(?:\s+at\s+|\s*[\[({{<]at[\])}}>]\s*|\s*@\s*)"
            rf"[\w\-]{{1,63}}(?:(?:{_SPELT_DOT}|\.)[\w\-]{{1,63}}){{0,3}}{_SPELT_DOT}(?:{_TLD})\b",
            re.IGNORECASE,
        ),
    ),
    Entity(
        "IBAN_CODE",
        re.compile(
            rf"\b[A-Z]{{2}}\d{{2}}(?:{_GAP}[A-Z0-9]{{4}}){{2,7}}(?:{_GAP}[A-Z0-9]{{1,3}})?\b", re.IGNORECASE
        ),
        iban_valid,
        cut_at_separators=True,
    ),
    Entity(
        "CREDIT_CARD",
        re.compile(rf"(?<!{_ALNUM})\d(?:{_GAP}\d){{12,18}}(?!{_ALNUM})"),
        _card_valid,
        cut_at_separators=True,
        longest_run=40,  # two cards side by side and change
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
    Entity(
        "DATE_TIME",
        _after(r"date of birth|birth ?date|birthday(?:\s+is)?(?:\s+on)?|d\.?o\.?b\.?|born(?:\s+on)?", _DATE),
        group=1,
    ),
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
            rf"|\b\d{{1,5}}[a-z]?,?\s+(?:[a-z][\w'\-]*\s+){{1,3}}(?:{_STREET_LOWER})\b"  # in lower case
            r"|\b[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}\b"  # a UK postcode
            r"|\b[ABCEGHJ-NPRSTVXY]\d[A-Z] ?\d[A-Z]\d\b"  # a Canadian one
            rf"|\b(?:{_US_STATE_CODES}|(?i:{_US_STATES})),?\s+\d{{5}}(?:-\d{{4}})?\b"  # a ZIP after its state
            # Elsewhere in Europe: "12 rue de la Paix", "Hauptstraße 5", "Via Roma 1".
            rf"|\b\d{{1,5}}[a-z]?,?\s+(?i:{_STREET_BEFORE})\s+(?:(?:de|du|des|la|le|l')\s+)*[A-Z][\w'\-]*"
            rf"|\b(?:[A-Z][\w'\-]*(?:{_STREET_SUFFIX})|(?i:{_STREET_FIRST})\s+(?:(?:de|del|della|da|do|di)\s+)*"
            r"[A-Z][\w'\-]*)\s+\d{1,5}[a-z]?\b"
        ),
    ),
    # A postcode and town after a comma: "…, 10115 Berlin", "…, 1012 AB Amsterdam".
    Entity("LOCATION", re.compile(r",\s*((?:[A-Z]{1,2}-)?\d{4,5}(?: ?[A-Z]{2})?\s+[A-Z][^\W\d_]+)"), group=1),
    # After "my name is" a name in any case, up to a word that cannot be one ("my name is on ...");
    # after "I'm", "this is", a greeting or a sign-off, capitalised words only ("I'm John Smith",
    # "Hi Mei," and "Thanks, Ann.", the name ending the phrase: "Hi, Today I ..." names no one).
    Entity(
        "PERSON",
        re.compile(
            rf"(?i:\bmy\s+name\s+is|\bmy\s+name's|\bname\s*:|\bcall\s+me)\s+({_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}})"
        ),
        group=1,
    ),
    Entity(
        "PERSON",
        re.compile(rf"(?i:\bi'?m|\bi\s+am|\bthis\s+is)\s+((?:{_TITLE_WORD}\s+){{1,2}}{_TITLE_WORD})"),
        group=1,
    ),
    Entity(
        "PERSON",
        re.compile(
            rf"(?i:\b(?:(?:signed|regards|sincerely|cheers|thanks|thank\s+you|best),?|dear|hi|hello|hey))\s+"
            rf"({_TITLE_WORD}(?:\s+{_TITLE_WORD}){{0,2}})(?=\s*(?:[.,;:!?)]|\Z))"
        ),
        group=1,
    ),
    # With phone punctuation: a phone number refused because digits come before or after it
    # ("(02) 9374 4000 2") is still masked here.
    Entity("NUMBER", re.compile(rf"\d(?:{_GAP}\d){{8,}}|\d{{6,}}")),
)


Spans = list[tuple[int, int, str]]
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*>")


class PrivacyError(RuntimeError):
    """A masking engine that cannot be set up (its extra is not installed)."""


def find(text: str) -> Spans:
    """Non-overlapping ``(start, end, entity)`` spans of personal data in normalised ``text``.

    A placeholder already there (``<IBAN_CODE>``) is never part of a span: masking a masked text
    changes nothing, and no pattern reads a placeholder's letters as data."""
    placeholders: Spans = [(m.start(), m.end(), "") for m in _PLACEHOLDER.finditer(text)]
    taken: Spans = list(placeholders)
    for entity in ENTITIES:
        # Each kind is looked for in the text the kinds before it left free, so that a number
        # beside an IBAN is still found, not dropped with a longer match that overlapped it.
        for start, end in _free(taken, len(text)):
            taken += [(s, e, entity.name) for s, e in entity.spans(text, start, end)]
    found = [span for span in taken if span[2]]
    return sorted(found + [span for span in _edge_numbers(text) if _is_free(span, taken)])


def _edge_numbers(text: str) -> Spans:
    """The digits (seven or more, separators between them) that start or end ``text``, a date
    aside: what a number split across two texts leaves at their edges. The end is read on the reversed text
    with the same pattern; both are anchored, so each is read once."""
    spans: Spans = []
    for reverse in (False, True):
        match = _EDGE_DIGITS.match(text[::-1] if reverse else text)
        digits = match.group(1) if match else ""
        if sum(c.isdigit() for c in digits) >= 7 and not _DAY.fullmatch(digits[::-1] if reverse else digits):
            start, end = match.span(1)
            spans.append(
                (len(text) - end, len(text) - start, "NUMBER") if reverse else (start, end, "NUMBER")
            )
    return spans if len(spans) < 2 or spans[0][1] <= spans[1][0] else spans[:1]


def _is_free(span: tuple[int, int, str], taken: Spans) -> bool:
    return all(span[1] <= start or end <= span[0] for start, end, _ in taken)


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
    return _replaced(text, (finder or _finder)(text))


def _replaced(text: str, spans: Spans) -> str:
    """``text`` with each of the sorted, non-overlapping ``spans`` replaced by its placeholder."""
    if not spans:
        return text
    pieces, last = [], 0
    for start, end, name in spans:
        pieces += [text[last:start], f"<{name}>"]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)
