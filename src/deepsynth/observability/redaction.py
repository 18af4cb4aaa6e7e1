"""Redact personal data from OCR text before it is stored: emails, phone numbers, IBANs, payment card numbers.

Rules are deliberately conservative about what they *keep*: an IBAN only needs a known country code and that
country's length (OCR errors often break the checksum), a card number must pass the Luhn check (long order
numbers stay readable), and a phone number needs 9-15 digits in phone-like grouping, so dates, times, years,
amounts and thousands-separated numbers are left alone.

    text, counts = redact("Mail jane@x.org or call +33 6 12 34 56 78")
    # -> "Mail [EMAIL] or call [PHONE]", {"email": 1, "phone": 1}
"""

from __future__ import annotations

import re
from collections import Counter

# ISO 13616 registry: country code -> IBAN length.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
IBAN_START = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})(\d{2})")
# 13-19 digits, optionally in groups separated by single spaces or dashes.
CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
# Phone-like: optional "+", digits and (area) groups joined by at most one space, dot, dash or slash.
PHONE = re.compile(
    r"(?<![\w+.,/-])(?:\+ ?)?(?:\(\d{1,5}\)|\d)(?:[ \u00a0.\-/]?(?:\(\d{1,5}\)|\d)){5,24}(?![\w:]|[.,\-/]\d)"
)
DATE = re.compile(r"^\d{1,4}([-./])\d{1,2}\1\d{2,4}(?:\s|$)")
THOUSANDS = re.compile(r"^\d{1,3}(?:([ .,\u00a0\u202f])\d{3})(?:\1\d{3})*$")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_phone(candidate: str, before: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if not 9 <= len(digits) <= 15:
        return False
    if before.rstrip().upper().endswith(("ISBN", "ISSN", "DOI")):
        return False
    stripped = candidate.strip()
    if DATE.match(stripped) or THOUSANDS.match(stripped):  # dates, thousands-grouped amounts
        return False
    if stripped.startswith(("+", "00", "0", "(")):
        return True
    groups = [g for g in re.split(r"[\s().\-/]+", stripped) if g]
    return len(groups) >= 3  # e.g. 555-123-4567, 555 123 4567


def _redact_ibans(text: str, counts: Counter) -> str:
    """Country code + check digits, then exactly that country's length of letters/digits (single spaces allowed)."""
    out, pos = [], 0
    for m in IBAN_START.finditer(text):
        want = IBAN_LENGTHS.get(m.group(1))
        if want is None or m.start() < pos:
            continue
        i, n = m.end(), 4
        while n < want and i < len(text):
            if text[i].isascii() and text[i].isalnum():
                n, i = n + 1, i + 1
            elif text[i] == " " and i + 1 < len(text) and text[i + 1].isascii() and text[i + 1].isalnum():
                i += 1
            else:
                break
        if n == want and not (
            i < len(text) and text[i].isascii() and text[i].isalnum() and text[i - 1] != " "
        ):
            out.append(text[pos : m.start()] + "[IBAN]")
            pos = i
            counts["iban"] += 1
    out.append(text[pos:])
    return "".join(out)


def _sub(pattern: re.Pattern, text: str, token: str, keep, counts: Counter, kind: str) -> str:
    def repl(m: re.Match) -> str:
        if keep(m):
            counts[kind] += 1
            return token
        return m.group(0)

    return pattern.sub(repl, text)


def redact(text: str) -> tuple[str, dict[str, int]]:
    """Replace personal data with ``[EMAIL]``, ``[IBAN]``, ``[CARD]``, ``[PHONE]``; returns (text, counts)."""
    counts: Counter = Counter()
    text = _sub(EMAIL, text, "[EMAIL]", lambda m: True, counts, "email")

    text = _redact_ibans(text, counts)
    text = _sub(CARD, text, "[CARD]", lambda m: luhn_ok(re.sub(r"\D", "", m.group(0))), counts, "card")
    text = _sub(
        PHONE, text, "[PHONE]", lambda m: _is_phone(m.group(0), m.string[: m.start()]), counts, "phone"
    )
    return text, dict(counts)
