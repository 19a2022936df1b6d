"""Seeded generator of realistic customer-service messages labelled with sentiment.

Messages are assembled from topic templates, slot fillers (products, amounts, dates, order
and account numbers, card numbers, e-mails, phone numbers), openers and closers. A share of
them is deliberately hard for a bag-of-words model: negation ("not bad at all"), sarcasm
(praise words around a complaint), mixed sentiment whose label follows the clause after
"but", and neutral questions that mention sentiment words. Each row carries its topic and a
``difficulty`` tag (easy / medium / hard); ``label_noise`` flips that share of labels.
"""

from __future__ import annotations

import random
import string

LABELS = ("positive", "negative", "neutral")
PROPORTIONS = (0.4, 0.3, 0.3)
DIFFICULTY_MIX = (("easy", 0.30), ("medium", 0.30), ("hard", 0.40))

PRODUCTS = [
    "wireless headphones",
    "smart watch",
    "coffee machine",
    "laptop stand",
    "phone case",
    "router",
    "air fryer",
    "running shoes",
    "winter jacket",
    "desk lamp",
    "blender",
    "gaming chair",
    "e-reader",
    "bluetooth speaker",
    "vacuum cleaner",
    "baby monitor",
    "standing desk",
    "electric toothbrush",
    "backpack",
    "security camera",
    "kettle",
    "monitor",
    "keyboard",
    "yoga mat",
    "car charger",
]
PLANS = ["Basic", "Premium", "Family", "Pro", "Student", "Business", "Unlimited"]
APPS = ["mobile", "iPhone", "Android", "desktop", "banking", "tracking"]
AGENTS = ["Sarah", "Tom", "Priya", "Miguel", "Aisha", "Jonas", "Mei", "Daniel", "Fatima", "Luca"]
NAMES = ["Anna", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jack"]
DEVICES = ["iOS 18", "Windows 11", "my Samsung TV", "a Mac", "Android 15", "Linux"]
COUNTRIES = ["Canada", "Ireland", "Germany", "Australia", "Mexico", "Japan", "Norway"]
DATES = [
    "Monday",
    "last Tuesday",
    "the 3rd",
    "March 14",
    "12/05",
    "2026-10-02",
    "last week",
    "yesterday",
    "the 21st of June",
    "Friday morning",
    "two weeks ago",
    "Nov 8",
]
CURRENCIES = ["$", "£", "€"]

CONTEXT = [
    "I ordered the {product} on {date}.",
    "My order number is {order}.",
    "My account number is {account}.",
    "You can reach me at {phone} or {email}.",
    "I've been a customer for {years} years.",
    "This is about order {order}.",
    "I paid with the card {card}.",
    "I'm on the {plan} plan.",
    "I spoke to {agent} on {date}.",
    "My email is {email}.",
]

# topic -> sentiment -> sentences. Easy sentences carry the sentiment in plain words.
TEMPLATES: dict[str, dict[str, list[str]]] = {
    "billing": {
        "negative": [
            "I was charged twice for my {plan} subscription this month.",
            "There's a charge of {amount} on my card that I never authorised.",
            "My bill jumped to {amount} without any warning.",
            "You took {amount} from account {account} after I had already paid.",
            "Your billing is a mess and I'm sick of chasing you about it.",
        ],
        "positive": [
            "Thanks for sorting out the double charge so quickly.",
            "The new {plan} pricing is a great deal, happy to stay.",
            "Billing finally makes sense, the new invoices are really clear.",
            "You credited {amount} back without me even asking, brilliant.",
        ],
        "neutral": [
            "Can you send me a copy of the invoice for order {order}?",
            "When is the next payment for account {account} due?",
            "How do I change the card on file to {card}?",
            "Could you explain the {amount} line on this month's statement?",
            "Do you offer annual billing for the {plan} plan?",
        ],
    },
    "delivery": {
        "negative": [
            "My order {order} still hasn't arrived after {days} days.",
            "The {product} showed up smashed and the box was soaking wet.",
            "Tracking has said out for delivery since {date} and nothing came.",
            "The courier left my parcel in the rain and the {product} is ruined.",
            "I paid {amount} for express shipping and it took {days} days.",
        ],
        "positive": [
            "My {product} arrived a day early and perfectly packed.",
            "Delivery was fast and the courier was really friendly.",
            "Super quick shipping, the {product} came the next morning.",
            "The parcel tracking was spot on and the {product} arrived on time.",
        ],
        "neutral": [
            "What's the delivery estimate for order {order}?",
            "Can I change the delivery address for order {order}?",
            "Do you ship to {country}?",
            "Is it possible to pick up the {product} from a store instead?",
            "Which courier handles deliveries for order {order}?",
        ],
    },
    "refunds": {
        "negative": [
            "I returned the {product} on {date} and I still haven't got my {amount} back.",
            "Your refund process is a joke, it's been {days} days.",
            "You refunded {amount} less than I paid for the {product}.",
            "Every time I ask about my refund I get a different useless answer.",
        ],
        "positive": [
            "The refund of {amount} landed in my account within a day, thank you!",
            "Returning the {product} was painless, great process.",
            "Really appreciate how quickly the refund for order {order} went through.",
        ],
        "neutral": [
            "What's your refund policy for opened items?",
            "How long do refunds usually take to reach the card {card}?",
            "Can I get a refund instead of store credit for order {order}?",
            "Where do I send the {product} back for a return?",
        ],
    },
    "login": {
        "negative": [
            "I can't log in since the update, it keeps rejecting my password.",
            "The verification code never arrives at {phone}.",
            "I've been locked out of my account for {days} days and nobody helps.",
            "Your password reset link is broken and I'm losing my patience.",
        ],
        "positive": [
            "Resetting my password took seconds, very smooth.",
            "The new fingerprint login on the {app} app is fantastic.",
            "Thanks, I can get into my account again, you saved my day.",
        ],
        "neutral": [
            "How do I enable two-factor authentication?",
            "Please update my phone number to {phone}.",
            "Can I log in with {email} instead of my username?",
            "Is there a way to see which devices are signed in to account {account}?",
        ],
    },
    "cancellation": {
        "negative": [
            "I cancelled on {date} and you still charged me {amount}.",
            "Cancelling my {plan} plan is impossible, the button does nothing.",
            "You made cancelling so hard that I'll never sign up again.",
            "I asked to cancel three times and I'm still being billed.",
        ],
        "positive": [
            "Cancelling was quick and easy, thanks for not making it a hassle.",
            "Thank you for pausing my {plan} plan instead, that's perfect.",
            "Appreciate the smooth cancellation, I'll happily come back later.",
        ],
        "neutral": [
            "I'd like to cancel my {plan} plan at the end of the month.",
            "What happens to my data if I close account {account}?",
            "Is there a notice period for cancelling the {plan} plan?",
            "Can I downgrade from {plan} instead of cancelling?",
        ],
    },
    "technical": {
        "negative": [
            "The {app} app crashes every time I open the payment page.",
            "The {product} stopped working after {days} days.",
            "Your website throws an error when I try to check out.",
            "The latest update broke everything and the {product} won't even turn on.",
            "The {product} overheats and shuts down, it's dangerous.",
        ],
        "positive": [
            "The latest {app} app update made everything so much faster.",
            "The {product} works perfectly, exactly what I needed.",
            "Setup took two minutes, the {product} is brilliant.",
            "The firmware update fixed the bug, works like a charm now.",
        ],
        "neutral": [
            "Which version of the {app} app supports dark mode?",
            "Is the {product} compatible with {device}?",
            "How do I reset the {product} to factory settings?",
            "Where can I find the manual for the {product}?",
            "Does the {product} need a firmware update before first use?",
        ],
    },
    "support": {
        "negative": [
            "I waited {minutes} minutes on hold and then got cut off.",
            "Your agent was rude and hung up on me.",
            "Nobody answers my emails, this is the worst service I've had.",
            "I've explained my problem to five different people and nothing happens.",
        ],
        "positive": [
            "{agent} was incredibly helpful and patient with me.",
            "Best customer service I've had in years, thank you.",
            "{agent} sorted everything out in one call, amazing.",
            "Thanks for the fast and friendly reply, problem solved.",
        ],
        "neutral": [
            "What are your support hours on weekends?",
            "Can I book a call with someone from support for {date}?",
            "Is there a phone number for support in {country}?",
            "Please reply to {email} rather than to this address.",
        ],
    },
    "account": {
        "negative": [
            "Someone changed the email on my account to {email} and you let them.",
            "My loyalty points disappeared and nobody can explain why.",
            "You merged my account with a stranger's, this is unbelievable.",
        ],
        "positive": [
            "Love the new account dashboard, so much easier to use.",
            "Thanks for restoring my loyalty points so quickly.",
            "Updating my details was simple, great job on the new settings page.",
        ],
        "neutral": [
            "Please update the email on account {account} to {email}.",
            "How do I add a second user to the {plan} plan?",
            "Can you confirm the address on file for account {account}?",
            "I'd like to download a copy of my account data.",
        ],
    },
}

SHORT = {
    "negative": [
        "Still waiting.",
        "Useless.",
        "This is ridiculous.",
        "Worst experience ever.",
        "Not impressed.",
        "Very disappointed.",
        "Fix this now.",
    ],
    "positive": [
        "Got it, thanks!",
        "Perfect, thank you.",
        "Great service!",
        "Works now, cheers.",
        "Love it.",
        "Brilliant, thanks so much.",
    ],
    "neutral": [
        "Order {order} status?",
        "Any update on {order}?",
        "Opening hours?",
        "Is this in stock?",
        "Need an invoice.",
        "Change my address please.",
    ],
}

# Hard cases: the label follows the meaning, not the word counts.
SARCASM = [
    "Oh great, {bad_event}. Just fantastic.",
    "Wow, {bad_event}. Amazing service, really.",
    "Love how {bad_event}. Brilliant work, everyone.",
    "Thanks a lot, {bad_event}. Really appreciate it.",
    "Perfect, {bad_event}. Exactly what I wanted today.",
    "Fantastic job, {bad_event}. Keep it up.",
]
BAD_EVENTS = [
    "my order is late again",
    "I got charged twice",
    "the app crashed again",
    "I was on hold for {minutes} minutes",
    "the {product} broke after {days} days",
    "my refund vanished",
    "the parcel went to the wrong address",
    "the password reset link expired before it arrived",
]
# Negation far from the sentiment word: the label is the adjective's polarity flipped by the
# frame, which a linear model over words and bigrams cannot represent.
NEGATION_FRAMES = [
    ("I would say {thing} was {adj}.", "I would not say {thing} was {adj}."),
    ("I can honestly say {thing} is {adj}.", "I can't honestly say {thing} is {adj}."),
    ("I found {thing} {adj}, to be honest.", "I didn't find {thing} {adj}, to be honest."),
    ("Everyone here thinks {thing} is {adj}.", "Nobody here thinks {thing} is {adj}."),
    ("I've always had a {adj} time with {thing}.", "I've never had a {adj} time with {thing}."),
    ("{thing_cap} has been {adj} so far.", "{thing_cap} hasn't been {adj} so far."),
]
ADJECTIVES = {
    "positive": [
        "good",
        "great",
        "helpful",
        "fast",
        "reliable",
        "easy to use",
        "worth the money",
        "excellent",
        "pleasant",
        "smooth",
    ],
    "negative": [
        "bad",
        "terrible",
        "slow",
        "useless",
        "unreliable",
        "confusing",
        "a waste of money",
        "awful",
        "frustrating",
        "a hassle",
    ],
}
THINGS = [
    "the {product}",
    "the delivery",
    "the refund process",
    "your {app} app",
    "the support team",
    "the {plan} plan",
    "the checkout",
    "your billing",
]
# Mixed sentiment: both clauses end on neutral words; the clause after the contrast wins.
CLAUSES = {
    "positive": [
        "I loved the {product} when it came",
        "{agent} on the phone was lovely to me",
        "the refund came through within a day",
        "the {app} app is really easy to use",
        "the price of the {plan} plan is fair",
        "delivery was super fast this time",
    ],
    "negative": [
        "the delivery took {days} days this time",
        "I was charged {amount} twice",
        "the {product} stopped working within a week",
        "nobody answered my emails",
        "the {app} app keeps logging me out",
        "the refund never came through",
    ],
}
CONTRASTS = [", but ", ". However, ", ", although in the end ", "... that said, ", ", yet "]
NEUTRAL_WITH_SENTIMENT_WORDS = [
    "Is the {product} good for beginners?",
    "My friend said the {product} is terrible, is that the old model?",
    "What's the best way to reach a manager about account {account}?",
    "Is the {plan} plan better than the Basic one for a family?",
    "How do I file a complaint form for a lost parcel, just for my records?",
    "Would the refund be faster if I used the card {card}?",
    "Are the reviews saying the {product} is awful about the older version?",
    "Is {thing} {adj} for someone who travels a lot?",
    "Would you say {thing} is {adj} compared to last year?",
    "I don't know yet whether {thing} is {adj}, can you send me the details?",
    "Before I decide if {thing} is {adj}, what does it cost?",
    "I can't tell from the website whether {thing} is {adj}.",
    "Someone asked me if {thing} was {adj}, where can I read reviews?",
]
NEGATED_PHRASES = {
    "positive": [
        "Not bad at all.",
        "Can't complain.",
        "No issues whatsoever.",
        "It didn't disappoint.",
        "Never had a problem since.",
    ],
    "negative": [
        "Not good at all.",
        "Not happy.",
        "Wouldn't call that helpful.",
        "Not what you promised.",
        "Can't say I'm satisfied.",
    ],
}

OPENERS = [
    "Hi,",
    "Hello team,",
    "Hey there.",
    "Good morning,",
    "To whom it may concern,",
    "Hi {agent},",
    "Hello,",
    "Dear support,",
]
CLOSERS = {
    "any": [
        "Thanks.",
        "Regards, {name}",
        "Cheers",
        "Sent from my phone",
        "Thanks in advance.",
        "Kind regards, {name}",
        "Best, {name}",
    ],
    "negative": [
        "Sort it out.",
        "I expect a reply today.",
        "This is unacceptable.",
        "I want to speak to a manager.",
    ],
    "positive": ["Keep up the good work!", "Thanks again!", "You've got a loyal customer."],
    "neutral": ["Please let me know.", "Thanks for your help.", "Looking forward to your reply."],
}


class _Slots:
    """Random fillers for template slots, drawn from one seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def __getitem__(self, key: str) -> str:
        rng = self.rng
        match key:
            case "product":
                return rng.choice(PRODUCTS)
            case "plan":
                return rng.choice(PLANS)
            case "app":
                return rng.choice(APPS)
            case "agent":
                return rng.choice(AGENTS)
            case "name":
                return rng.choice(NAMES)
            case "device":
                return rng.choice(DEVICES)
            case "country":
                return rng.choice(COUNTRIES)
            case "date":
                return rng.choice(DATES)
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
    return fill(rng.choice(TEMPLATES[topic][label]), slots)


def _easy(rng: random.Random, slots: _Slots, topic: str, label: str) -> str:
    if rng.random() < 0.15:
        return fill(rng.choice(SHORT[label]), slots)
    parts = [_sentence(rng, slots, topic, label)]
    if rng.random() < 0.3:
        parts.append(fill(rng.choice(CLOSERS[label]), slots))
    return " ".join(parts)


def _medium(rng: random.Random, slots: _Slots, topic: str, label: str) -> str:
    """Several sentences: context facts, one or two on-topic ones, a generic closer."""
    parts = [fill(rng.choice(CONTEXT), slots) for _ in range(rng.randint(0, 2))]
    other = rng.choice([t for t in TEMPLATES if t != topic])
    parts.append(_sentence(rng, slots, topic, label))
    if rng.random() < 0.5:
        parts.append(_sentence(rng, slots, other, label))
    rng.shuffle(parts)
    if label != "neutral" and rng.random() < 0.4:
        parts.append(fill(rng.choice(NEGATED_PHRASES[label]), slots))
    if rng.random() < 0.6:
        parts.append(fill(rng.choice(CLOSERS["any"]), slots))
    return " ".join(parts)


def _hard(rng: random.Random, slots: _Slots, topic: str, label: str) -> str:
    """Negation at a distance, mixed sentiment, sarcasm, or a neutral question with loaded words."""
    if label == "neutral":
        text = fill(rng.choice(NEUTRAL_WITH_SENTIMENT_WORDS), slots)
        if rng.random() < 0.4:
            text = fill(rng.choice(CONTEXT), slots) + " " + text
        return text
    style = rng.choice(["negation"] * 4 + ["mixed"] + (["sarcasm"] if label == "negative" else []))
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


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _typos(rng: random.Random, text: str, rate: float) -> str:
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
    """Openers, casing, punctuation and typos, the way people really write."""
    if rng.random() < 0.35:
        opener = fill(rng.choice(OPENERS), slots)
        if opener.endswith(","):
            text = text[:1].lower() + text[1:]
        text = opener + " " + text
    if rng.random() < 0.2:
        text = _typos(rng, text, 0.12)
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
