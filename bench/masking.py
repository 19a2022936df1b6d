"""What personal data each masking engine lets through, on a set of probes written for it, and
what masking costs on texts written to make it slow.

    .venv/bin/python -m bench.masking --save

Each probe is a message and the raw values in it. A value leaks when the masked message still
holds it, compared without separators (``4111 1111`` leaks as ``41111111``), or, for a number,
when more than six of its digits survive in one run (what PCI DSS lets a receipt show). A probe
of two texts is masked one text at a time, as the router masks each text of a cloud request,
and its values are looked for in what the two become together. Both engines are run: ``regex``
(the default) and ``presidio`` (the ``presidio`` extra).

The cost: each adversarial text (4,000 characters, the service's limit: long runs of word
characters, of spaces, of digits with separators, half-formed addresses, ligatures that NFKC
lengthens) is masked three times after a warm-up, and the median kept; the baseline, in the
same run, is the generated support messages. Prints one JSON object: per engine the probes,
the leaks and each leaking probe with what it became, the worst adversarial text in ms per KB
and the generated messages' mean, with their ratio.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

from bench.common import emit

# (kind, texts, raw values): none of these is in the tests, so they measure, not confirm.
PROBES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("card", ("Card: 5555\t5555\t5555\t4444 was declined",), ("5555555555554444",)),
    ("card", ("visa 4012|8888|8888|1881 charged twice",), ("4012888888881881",)),
    ("card", ("use 3782:822463:10005 for the refund",), ("378282246310005",)),
    ("card", ("card no. 6011;1111;1111;1117",), ("6011111111111117",)),
    ("card", ("it's 4242*4242*4242*4242!",), ("4242424242424242",)),
    ("card", ("my card 5105\u00b71051\u00b70510\u00b75100 expired",), ("5105105105105100",)),
    ("card", ("card 4000\u20220566\u20225566\u20225556",), ("4000056655665556",)),
    ("card", ("4111\n1111\n1111\n1111 is my card",), ("4111111111111111",)),
    ("card", ("number 4111\r\n1111\r\n1111\r\n1111",), ("4111111111111111",)),
    ("card", ("card 5200 8282 8282 8210 and 2 other issues",), ("5200828282828210",)),
    ("card", ("card 4111 . 1111 . 1111 . 1111",), ("4111111111111111",)),
    ("card", ("card 4111!1111!1111!1111 please",), ("4111111111111111",)),
    ("card split", ("my card is 5555 5555", "5555 4444, please refund"), ("5555555555554444",)),
    ("card split", ("card 4012 8888 8888", "1881 was charged"), ("4012888888881881",)),
    ("iban", ("refund to DE89-3704-0044-0532-0130-00",), ("DE89370400440532013000",)),
    ("iban", ("iban: FR14 2004 1010 0505 0001 3M02 606",), ("FR1420041010050500013M02606",)),
    ("iban", ("IBAN NL91\tABNA\t0417\t1643\t00 thanks",), ("NL91ABNA0417164300",)),
    ("iban", ("send it to gb82.west.1234.5698.7654.32",), ("GB82WEST12345698765432",)),
    ("email", ("reach me at maria dot lopez at outlook dot com",), ("maria", "lopez", "outlook")),
    ("email", ("mail: tom[at]acme[dot]io",), ("tom[at]acme",)),
    ("email", ("contact: k.tanaka (at) example (dot) jp",), ("k.tanaka",)),
    ("email", ("my address is a_b-c@sub.example.travel",), ("a_b-c@sub.example.travel",)),
    ("email", ("email JOHN.DOE@EXAMPLE.COM asap",), ("JOHN.DOE",)),
    ("email", ("write to ann {at} mail {dot} org",), ("ann {at} mail",)),
    ("phone", ("call me on +33 1 42 68 53 00",), ("142685300",)),
    ("phone", ("mobile 07700-900-461",), ("07700900461",)),
    ("phone", ("ring (415) 555-0198 after five",), ("4155550198",)),
    ("phone", ("my number is 0044 20 7946 0321",), ("00442079460321",)),
    ("phone", ("text 555 0142 tonight",), ("5550142",)),
    ("birthday", ("my birthday is 02/11/1979",), ("02/11/1979",)),
    ("birthday", ("birthday: 11 November 1979",), ("11 November 1979",)),
    ("birthday", ("my birthday is on May 3, 1990",), ("May 3, 1990",)),
    ("birthday", ("date of birth 1990-05-03",), ("1990-05-03",)),
    ("birthday", ("DOB: 3.5.1990",), ("3.5.1990",)),
    ("name", ("MY NAME IS ROBERT BROWN",), ("ROBERT BROWN",)),
    ("name", ("my name is robert brown and i need help",), ("robert brown",)),
    ("name", ("Hello, my name's Priya Patel.",), ("Priya Patel",)),
    ("name", ("I'm Carlos Mendez, a customer since 2019",), ("Carlos Mendez",)),
    ("name", ("I am Olivia Wilde and my order is late",), ("Olivia Wilde",)),
    ("name", ("Regards, Henrik Larsen",), ("Henrik Larsen",)),
    ("name", ("Sincerely, Grace Kim",), ("Grace Kim",)),
    ("name", ("Dear Mr Thompson, ...",), ("Thompson",)),
    ("name", ("Cheers, Liam.",), ("Liam",)),
    ("name", ("name: fatima zahra",), ("fatima zahra",)),
    ("name", ("Thanks, Noor",), ("Noor",)),
    ("name", ("This is Daniel Ortega from accounts",), ("Daniel Ortega",)),
    (
        "address",
        ("deliver to 1600 Pennsylvania Avenue, Washington, DC 20500",),
        ("1600 Pennsylvania", "20500"),
    ),
    ("address", ("I moved to Portland, OR 97205",), ("97205",)),
    ("address", ("ship to Denver, Colorado 80202-1234",), ("80202",)),
    ("address", ("my postcode is SW1A 1AA",), ("SW1A 1AA",)),
    ("address", ("Vancouver BC V6B 4Y8",), ("V6B 4Y8",)),
    ("address", ("Lindenstraße 14, 50674 Köln",), ("Lindenstraße 14", "50674")),
    ("address", ("5 avenue Victor Hugo, 75116 Paris",), ("Victor Hugo", "75116")),
    ("address", ("Calle Mayor 12, 28013 Madrid",), ("Calle Mayor 12", "28013")),
    ("address", ("Prinsengracht 263, 1016 GV Amsterdam",), ("Prinsengracht 263", "1016 GV")),
    ("address", ("I live at 10 downing street",), ("10 downing",)),
    ("account", ("account #: 99-1234-5678",), ("9912345678",)),
    ("account", ("acct 00123456",), ("00123456",)),
    ("passport", ("passport no. 123456789",), ("123456789",)),
    ("nino", ("NI: AB 12 34 56 C",), ("AB123456C",)),
    ("ip", ("my router is on 192.168.1.254",), ("192.168.1.254",)),
    ("number", ("ref 1234_5678_9012",), ("123456789012",)),
    ("number", ("code 12-34-56-78-90",), ("1234567890",)),
    ("number", ("membership 7788 9900 1122",), ("778899001122",)),
]


def _bare(value: str) -> str:
    return re.sub(r"[\W_]", "", value).lower()


def leaked(masked: str, values: tuple[str, ...]) -> list[str]:
    """The raw ``values`` that ``masked`` still holds."""
    bare = _bare(masked)
    runs = [len(run) for run in re.findall(r"\d+", re.sub(r"[\W_]", "", masked))]
    found = []
    for value in values:
        digits = sum(c.isdigit() for c in value)
        if _bare(value) in bare or (digits > 6 and value.isdigit() and max(runs, default=0) > 6):
            found.append(value)
    return found


LENGTH = 4000  # limits.max_text_chars
ADVERSARIAL = {
    "a word 4,000 letters long": "a" * LENGTH,
    "4,000 spaces": "a" + " " * (LENGTH - 2) + "b",
    "digits and spaces": "1 " * (LENGTH // 2),
    "digits and dashes": "1-" * (LENGTH // 2),
    "digits and colons": "1:" * (LENGTH // 2),
    "digits and dots": "1.1." * (LENGTH // 4),
    "digits and letters": "1a" * (LENGTH // 2),
    "'a dot' repeated": "a dot " * (LENGTH // 6),
    "'a at' repeated": "a at " * (LENGTH // 5),
    "'a@' repeated": "a@" * (LENGTH // 2),
    "'my name is' repeated": "my name is " * (LENGTH // 11),
    "'Hi Aa' repeated": "Hi Aa " * (LENGTH // 6),
    "IBAN prefixes": "GB82 " * (LENGTH // 5),
    "street numbers": "1 Aa " * (LENGTH // 5),
    "ligatures NFKC makes 18 letters": "\ufdfa" * (LENGTH // 18),
}


def ms_per_kb(mask, text: str) -> float:
    mask(text)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        mask(text)
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings) / (len(text.encode()) / 1024)


def cost(mask) -> dict:
    from tasks.support.synthetic import generate

    adversarial = {name: round(ms_per_kb(mask, text), 2) for name, text in ADVERSARIAL.items()}
    messages = [row["text"] for row in generate(300, seed=3)]
    baseline = statistics.mean(ms_per_kb(mask, text) for text in messages)
    worst = max(adversarial, key=adversarial.get)
    return {
        "adversarial_ms_per_kb": adversarial,
        "worst": {"text": worst, "ms_per_kb": adversarial[worst]},
        "generated_messages_ms_per_kb": round(baseline, 2),
        "worst_over_generated": round(adversarial[worst] / baseline, 1),
    }


def run(mask) -> dict:
    leaks = []
    for kind, texts, values in PROBES:
        masked = [mask(text) for text in texts]
        found = leaked(" ".join(masked), values)
        if found:
            leaks.append({"kind": kind, "texts": list(texts), "masked": masked, "leaked": found})
    return {"probes": len(PROBES), "leaking_probes": len(leaks), "leaks": leaks}


def main() -> None:
    from edgeroute.config import PrivacyConfig
    from edgeroute.privacy import find, mask, presidio_finder

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    presidio = presidio_finder(PrivacyConfig(engine="presidio"))
    engines = {"regex": lambda text: mask(text, find), "presidio": lambda text: mask(text, presidio)}
    emit(
        "masking", {name: run(engine) | {"cost": cost(engine)} for name, engine in engines.items()}, args.save
    )


if __name__ == "__main__":
    main()
