"""Seeded generator of realistic customer-service messages labelled with sentiment.

Messages are assembled from topic templates, slot fillers (products, amounts, dates, order
and account numbers, card numbers, e-mails, phone numbers), openers, lead-ins, questions and
closers. A share of them is deliberately hard for a bag-of-words model: negation ("not bad at
all"), sarcasm (praise words around a complaint), mixed sentiment whose label follows the clause
after "but", multi-issue messages, and neutral questions that mention sentiment words. Each row
carries its topic and a ``difficulty`` tag (easy / medium / hard); ``label_noise`` flips that
share of labels.

Nothing but the sentiment gives the label away (`bench/shortcuts.py` probes it): greetings,
lead-ins ("Quick question about my account."), plain questions and sign-offs ("Thanks.") are
drawn from one pool for every class; positive and negative messages ask questions too, and
neutral ones are requests as often as questions.
"""

from __future__ import annotations

import json
import random
import string
from importlib import resources

LABELS = ("positive", "negative", "neutral")
PROPORTIONS = (0.4, 0.3, 0.3)
DIFFICULTY_MIX = (("easy", 0.30), ("medium", 0.30), ("hard", 0.40))

# The word lists and templates the generator fills: data, in the JSON file beside this module.
# ``templates``: topic -> sentiment -> sentences, the sentiment in plain words. The hard cases
# follow the meaning, not the word counts: ``negation_frames`` (plain, negated) flip an
# adjective's polarity far from it, which a linear model over words and bigrams cannot
# represent; in mixed sentiment (``clauses``, ``contrasts``) the clause after the contrast wins.
VOCABULARY = json.loads(resources.files(__package__).joinpath("synthetic_vocabulary.json").read_text("utf-8"))
PRODUCTS = VOCABULARY["products"]
PLANS = VOCABULARY["plans"]
APPS = VOCABULARY["apps"]
AGENTS = VOCABULARY["agents"]
NAMES = VOCABULARY["names"]
DEVICES = VOCABULARY["devices"]
COUNTRIES = VOCABULARY["countries"]
DATES = VOCABULARY["dates"]
CURRENCIES = VOCABULARY["currencies"]
CONTEXT = VOCABULARY["context"]
TEMPLATES = VOCABULARY["templates"]
SHORT = VOCABULARY["short"]
SARCASM = VOCABULARY["sarcasm"]
BAD_EVENTS = VOCABULARY["bad_events"]
NEGATION_FRAMES = VOCABULARY["negation_frames"]
ADJECTIVES = VOCABULARY["adjectives"]
THINGS = VOCABULARY["things"]
CLAUSES = VOCABULARY["clauses"]
CONTRASTS = VOCABULARY["contrasts"]
NEUTRAL_WITH_SENTIMENT_WORDS = VOCABULARY["neutral_with_sentiment_words"]
NEGATED_PHRASES = VOCABULARY["negated_phrases"]
OPENERS = VOCABULARY["openers"]
CLOSERS = VOCABULARY["closers"]
LEADS = VOCABULARY["leads"]
QUESTIONS = VOCABULARY["questions"]
REQUESTS = VOCABULARY["requests"]
CONNECTORS = VOCABULARY["connectors"]

# Slots filled with one of a list.
CHOICES = {
    "product": PRODUCTS, "plan": PLANS, "app": APPS, "agent": AGENTS, "name": NAMES,
    "device": DEVICES, "country": COUNTRIES, "date": DATES,
}  # fmt: skip


class _Slots:
    """Random fillers for template slots, drawn from one seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def __getitem__(self, key: str) -> str:
        rng = self.rng
        if key in CHOICES:
            return rng.choice(CHOICES[key])
        match key:
            case "days":
                return str(rng.randint(3, 30))
            case "minutes":
                return str(rng.choice([20, 35, 45, 60, 90, 120]))
            case "years":
                return str(rng.randint(2, 15))
            case "amount":
                return f"{rng.choice(CURRENCIES)}{rng.randint(5, 900)}.{rng.randint(0, 99):02d}"
            case "order":
                if rng.random() < 0.5:
                    return f"#{rng.randint(100000, 999999)}"
                return "ORD-" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=8))
            case "account":
                return "".join(rng.choices(string.digits, k=rng.choice([8, 10, 12])))
            case "card":
                return luhn_number(rng)
            case "email":
                name = rng.choice(NAMES).lower()
                return f"{name}.{rng.randint(1, 999)}@{rng.choice(['example.com', 'mail.test'])}"
            case "phone":
                return f"+1 555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
            case "bad_event":
                return fill(rng.choice(BAD_EVENTS), self)
            case "thing":
                return fill(rng.choice(THINGS), self)
            case "thing_cap":
                return _capitalise(self["thing"])
            case "adj":
                return rng.choice(ADJECTIVES[rng.choice(["positive", "negative"])])
        raise KeyError(key)


def luhn_number(rng: random.Random) -> str:
    """A 16-digit card number that passes the Luhn check, grouped in fours."""
    digits = [rng.choice([4, 5])] + [rng.randint(0, 9) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    digits.append((10 - total % 10) % 10)
    text = "".join(map(str, digits))
    return " ".join(text[i : i + 4] for i in range(0, 16, 4))


def fill(template: str, slots: _Slots) -> str:
    """Fill ``{slot}`` placeholders, drawing each occurrence afresh."""
    return string.Formatter().vformat(template, (), slots)


def _sentence(rng: random.Random, slots: _Slots, topic: str, label: str) -> str:
    """One on-topic sentence or a request (neutral ones: as often as not, or they would all be questions)."""
    if rng.random() < (0.4 if label == "neutral" else 0.15):
        return fill(rng.choice(REQUESTS[label]), slots)
    return fill(rng.choice(TEMPLATES[topic][label]), slots)


def _shared(rng: random.Random, slots: _Slots, pool: dict[str, list[str]], label: str) -> str:
    """A question or a closer: from the pool every class draws on, or one with the label's sentiment."""
    return fill(rng.choice(pool["any"] + pool.get(label, [])), slots)


def _easy(rng: random.Random, slots: _Slots, topic: str, label: str) -> str:
    if rng.random() < 0.15:
        return fill(rng.choice(SHORT[label]), slots)
    parts = [_sentence(rng, slots, topic, label)]
    if rng.random() < 0.25:
        parts.append(_shared(rng, slots, QUESTIONS, label))
    if rng.random() < 0.3:
        parts.append(_shared(rng, slots, CLOSERS, label))
    return " ".join(parts)


def _medium(rng: random.Random, slots: _Slots, topic: str, label: str) -> str:
    """Several sentences: context facts, one to three on-topic ones, a question, a closer."""
    parts = [fill(rng.choice(CONTEXT), slots) for _ in range(rng.randint(0, 2))]
    parts.append(_sentence(rng, slots, topic, label))
    for other in rng.sample([t for t in TEMPLATES if t != topic], rng.choice([0, 1, 1, 2])):
        parts.append(_sentence(rng, slots, other, label))
    if rng.random() < 0.4:
        parts.append(_shared(rng, slots, QUESTIONS, label))
    rng.shuffle(parts)
    if label != "neutral" and rng.random() < 0.4:
        parts.append(fill(rng.choice(NEGATED_PHRASES[label]), slots))
    if rng.random() < 0.6:
        parts.append(_shared(rng, slots, CLOSERS, label))
    return " ".join(parts)


def _multi(rng: random.Random, slots: _Slots, topic: str, label: str) -> str:
    """Two or three issues of one sentiment from different topics, listed the way people do,
    sometimes after a concession of the other sentiment ("The refund came through, but ...")."""
    topics = [topic, *rng.sample([t for t in TEMPLATES if t != topic], rng.randint(1, 2))]
    parts = [fill(rng.choice(CONTEXT), slots)] if rng.random() < 0.5 else []
    for n, other in enumerate(topics):
        sentence = _sentence(rng, slots, other, label)
        parts.append(sentence if n == 0 else rng.choice(CONNECTORS) + _decapitalise(sentence))
    if label != "neutral" and rng.random() < 0.5:
        # A concession of the other sentiment first, the issues after it deciding.
        opposite = "positive" if label == "negative" else "negative"
        concession = _capitalise(fill(rng.choice(CLAUSES[opposite]), slots)) + rng.choice(CONTRASTS)
        parts[-len(topics)] = concession + _decapitalise(parts[-len(topics)])
    if rng.random() < 0.5:
        parts.append(_shared(rng, slots, QUESTIONS, label))
    if rng.random() < 0.5:
        parts.append(_shared(rng, slots, CLOSERS, label))
    return " ".join(parts)


def _hard(rng: random.Random, slots: _Slots, topic: str, label: str) -> str:
    """Negation at a distance, mixed sentiment, sarcasm, several issues at once, or a neutral
    question with loaded words."""
    if label == "neutral":
        if rng.random() < 0.3:
            return _multi(rng, slots, topic, label)
        text = fill(rng.choice(NEUTRAL_WITH_SENTIMENT_WORDS), slots)
        if rng.random() < 0.4:
            text = fill(rng.choice(CONTEXT), slots) + " " + text
        return text
    styles = ["negation"] * 4 + ["mixed", "multi", "multi"] + (["sarcasm"] if label == "negative" else [])
    style = rng.choice(styles)
    if style == "multi":
        return _multi(rng, slots, topic, label)
    if style == "sarcasm":
        return fill(rng.choice(SARCASM), slots)
    if style == "negation":
        negated = rng.random() < 0.5
        polarity = label if not negated else ("positive" if label == "negative" else "negative")
        template = rng.choice(NEGATION_FRAMES)[negated]
        return fill(template.replace("{adj}", rng.choice(ADJECTIVES[polarity])), slots)
    other = "positive" if label == "negative" else "negative"
    text = fill(rng.choice(CLAUSES[other]), slots) + rng.choice(CONTRASTS)
    return _capitalise(text + fill(rng.choice(CLAUSES[label]), slots) + ".")


def _decapitalise(text: str) -> str:
    """Lower-case the first letter of a sentence that continues another, except "I" and "I'm"."""
    return text if text[:2] in ("I ", "I'") else text[:1].lower() + text[1:]


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def add_typos(rng: random.Random, text: str, rate: float) -> str:
    """Swap or drop letters in a share of the longer words."""
    words = text.split(" ")
    for i, word in enumerate(words):
        if len(word) > 3 and word.isalpha() and rng.random() < rate:
            j = rng.randrange(len(word) - 1)
            if rng.random() < 0.5:
                words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
            else:
                words[i] = word[:j] + word[j + 1 :]
    return " ".join(words)


def _surface(rng: random.Random, slots: _Slots, text: str) -> str:
    """Lead-ins, openers, casing, punctuation and typos, the way people really write."""
    if rng.random() < 0.25:
        text = fill(rng.choice(LEADS), slots) + " " + text
    if rng.random() < 0.35:
        opener = fill(rng.choice(OPENERS), slots)
        if opener.endswith(","):
            text = text[:1].lower() + text[1:]
        text = opener + " " + text
    if rng.random() < 0.2:
        text = add_typos(rng, text, 0.12)
    if rng.random() < 0.15:
        text = text.lower()
    if rng.random() < 0.15:
        text = text.rstrip(".!")
    return text


def generate(n_samples: int, seed: int, label_noise: float = 0.0) -> list[dict[str, str]]:
    """``n_samples`` messages drawn 40 / 30 / 30 positive / negative / neutral, reproducibly."""
    rng = random.Random(seed)
    slots = _Slots(rng)
    counts = [round(n_samples * p) for p in PROPORTIONS]
    counts[0] += n_samples - sum(counts)
    labels = [label for label, count in zip(LABELS, counts, strict=True) for _ in range(count)]
    rng.shuffle(labels)
    builders = {"easy": _easy, "medium": _medium, "hard": _hard}
    tiers, weights = zip(*DIFFICULTY_MIX, strict=True)
    rows = []
    for label in labels:
        topic = rng.choice(sorted(TEMPLATES))
        difficulty = rng.choices(tiers, weights)[0]
        text = _surface(rng, slots, builders[difficulty](rng, slots, topic, label))
        # Both draws happen whatever the rate, so the texts do not depend on label_noise.
        flip, replacement = rng.random(), rng.choice([other for other in LABELS if other != label])
        if flip < label_noise:
            label = replacement
        rows.append({"text": text, "label": label, "topic": topic, "difficulty": difficulty})
    return rows
