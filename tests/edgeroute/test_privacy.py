"""Personal data masking: every kind is caught, checksums decide the kind, masking is idempotent."""

from __future__ import annotations

import re

import pytest

from edgeroute.privacy import find, iban_valid, luhn_valid, mask


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("write to ben.482@example.com today", "write to <EMAIL_ADDRESS> today"),
        ("write to john.o'reilly@example.co.uk now", "write to <EMAIL_ADDRESS> now"),
        ("card 4111 1111 1111 1111 was charged", "card <CREDIT_CARD> was charged"),
        ("card 4111-1111-1111-1111 was charged", "card <CREDIT_CARD> was charged"),
        ("IBAN GB82 WEST 1234 5698 7654 32 please", "IBAN <IBAN_CODE> please"),
        ("IBAN DE89370400440532013000.", "IBAN <IBAN_CODE>."),
        ("IBAN ES91 2100 0418 4502 0005 1332 from Spain", "IBAN <IBAN_CODE> from Spain"),
        ("call (02) 9374 4000 2 times", "call (<NUMBER> times"),
        ("0 (20) 7946 0958 is mine", "<NUMBER> is mine"),
        ("call +1 555-467-9641 or (020) 7946 0958", "call <PHONE_NUMBER> or <PHONE_NUMBER>"),
        ("call +44 20 7946 0958 now", "call <PHONE_NUMBER> now"),
        ("My order number is #871494.", "My order number is <ORDER_NUMBER>."),
        ("This is about order ORD-0O80VY4Y.", "This is about order <ORDER_NUMBER>."),
        ("ticket TK12345 is open", "ticket <ORDER_NUMBER> is open"),
        ("payment for account 82906244 due?", "payment for account <ACCOUNT_NUMBER> due?"),
        ("my account number is AB-1234-567", "my account number is <ACCOUNT_NUMBER>"),
        ("reference 1234567 only", "reference <ORDER_NUMBER> only"),
        ("the code 99887766 from the letter", "the code <NUMBER> from the letter"),
    ],
)
def test_each_kind_of_personal_data_is_masked(text, masked):
    assert mask(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "I paid $129.99 on 2024-03-05 at 10:30 for 3 items",
        "order 12 arrived, 2 of 3 items were broken",
        "my account was locked for 14 days",
        "version 2.4.1 crashes on 5 devices",
    ],
)
def test_ordinary_numbers_and_words_are_left_alone(text):
    assert mask(text) == text


def test_checksums_decide_cards_and_ibans():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST12345698765433")
    # A number that fails Luhn is not a card, but it is still masked: privacy fails closed.
    assert [kind for *_, kind in find("card 4111 1111 1111 1112")] == ["NUMBER"]
    assert "IBAN_CODE" not in [kind for *_, kind in find("IBAN GB82 WEST 1234 5698 7654 33")]


def test_masking_the_generated_corpus_leaves_no_personal_data():
    from tasks.support.synthetic import generate

    texts = [row["text"] for row in generate(2000, seed=5)]
    masked = [mask(t) for t in texts]
    assert sum(m != t for m, t in zip(masked, texts, strict=True)) > 200  # the corpus carries plenty
    for text in masked:
        assert "@" not in text
        assert not re.search(r"\d{6}|\d{4} \d{4}|555-\d", text), text
        assert mask(text) == text
