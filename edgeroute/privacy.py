"""Personal data masking for text bound for the cloud tier.

Card numbers (Luhn-checked), IBANs (mod-97-checked), e-mail addresses, phone numbers, and
account and order numbers are replaced by ``<ENTITY>`` placeholders named as Presidio names
its entities, so a cloud model sees the shape of the message but none of the data. Any other
run of six or more digits (nine or more with spaces, dashes, dots or brackets between them)
is masked too: an unchecked number may still be an account number, and an over-masked digit
costs a classifier nothing.

Plain regular expressions, compiled once: `bench/privacy.py` measures why this is not Presidio.
Masking is idempotent: placeholders match no pattern.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

_SEP = r"[ \-]?"


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


@dataclass(frozen=True)
class Entity:
    """One kind of personal data: its placeholder name, pattern and optional checksum."""

    name: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None
    group: int = 0
    # On a failed check, try the match cut short at each space in it, longest first: the words
    # after an IBAN can fit its pattern of groups ("ES91 2100 0418 4502 0005 1332 from").
    cut_at_spaces: bool = False

    def spans(self, text: str, start: int = 0, end: int | None = None) -> Iterable[tuple[int, int]]:
        """Matches within ``text[start:end]``; the end of that range counts as the end of text."""
        for match in self.pattern.finditer(text, start, len(text) if end is None else end):
            if self.check is None:
                yield match.span(self.group)
                continue
            for candidate in self._candidates(text, match):
                if candidate and self.check(re.sub(r"[^0-9A-Za-z]", "", candidate.group(self.group))):
                    yield candidate.span(self.group)
                    break

    def _candidates(self, text: str, match: re.Match[str]) -> Iterator[re.Match[str] | None]:
        yield match
        if self.cut_at_spaces:
            for cut in range(match.end() - 1, match.start(), -1):
                if text[cut] == " ":
                    yield self.pattern.fullmatch(text, match.start(), cut)


# Order matters where patterns overlap: the more specific, checked entities claim text first.
ENTITIES: tuple[Entity, ...] = (
    Entity(
        "EMAIL_ADDRESS",
        re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"),
    ),
    Entity(
        "IBAN_CODE",
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", re.IGNORECASE),
        iban_valid,
        cut_at_spaces=True,
    ),
    Entity("CREDIT_CARD", re.compile(rf"(?<![\d\w])\d(?:{_SEP}\d){{12,18}}(?![\d\w])"), luhn_valid),
    Entity(
        "PHONE_NUMBER",
        re.compile(
            r"(?<![\w+])(?<!\d[ \-])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])"
            r"\d{3,4}[ .\-]?\d{3,4}(?![\w]|[ \-]\d)"
        ),
    ),
    Entity("ORDER_NUMBER", re.compile(r"#\d{4,}\b|\bORD-[A-Z0-9]{4,}\b", re.IGNORECASE)),
    Entity(
        "ORDER_NUMBER",
        re.compile(
            r"\b(?:order|invoice|ticket|tracking|reference|ref)\b(?:\s+(?:number|no\.?|id))?"
            r"\s*(?:is\s+|:\s*)?#?\s*((?=[A-Z\-#]*\d)[A-Z0-9][A-Z0-9\-]{3,})\b",
            re.IGNORECASE,
        ),
        group=1,
    ),
    Entity(
        "ACCOUNT_NUMBER",
        re.compile(
            r"\b(?:account|acct|a/c|customer|member|membership)\b(?:\s+(?:number|no\.?|id))?"
            r"\s*(?:is\s+|:\s*)?#?\s*((?=[A-Z\-]*\d)[A-Z0-9][A-Z0-9\-]{4,})\b",
            re.IGNORECASE,
        ),
        group=1,
    ),
    # With phone punctuation: a phone number refused because digits come before or after it
    # ("(02) 9374 4000 2") is still masked here.
    Entity("NUMBER", re.compile(r"\d{6,}|\d(?:[ .\-()]{0,2}\d){8,}")),
)


def find(text: str) -> list[tuple[int, int, str]]:
    """Non-overlapping ``(start, end, entity)`` spans of personal data, in text order."""
    taken: list[tuple[int, int, str]] = []
    for entity in ENTITIES:
        # Each kind is looked for in the text the kinds before it left free, so that a number
        # beside an IBAN is still found, not dropped with a longer match that overlapped it.
        for start, end in _free(taken, len(text)):
            taken += [(s, e, entity.name) for s, e in entity.spans(text, start, end)]
    return sorted(taken)


def _free(taken: list[tuple[int, int, str]], length: int) -> list[tuple[int, int]]:
    """The ranges of ``[0, length)`` outside the spans ``taken``."""
    free, last = [], 0
    for start, end, _ in sorted(taken):
        if start > last:
            free.append((last, start))
        last = max(last, end)
    return [*free, (last, length)] if last < length else free


def mask(text: str) -> str:
    """``text`` with every span of personal data replaced by ``<ENTITY>``."""
    spans = find(text)
    if not spans:
        return text
    pieces, last = [], 0
    for start, end, name in spans:
        pieces += [text[last:start], f"<{name}>"]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)
