"""The patterns and reference tables behind the moderation rules (``transforms/moderation_rules.py``).

Every regex here finds *candidates*; ``transforms/moderation_checks.py`` decides which of them
count (checksums, lengths, group shapes, context). Two habits keep them fast on long texts:

* no nested quantifier can split the same characters two ways (a separator is required between
  repeated groups, or the groups' classes do not overlap), so a failing match backtracks a
  bounded number of steps, never exponentially;
* every repetition of a PII or secret pattern has an upper bound, so one start position costs at
  most a bounded number of steps (the injection phrases' unbounded ``\\s+`` only spans the whitespace
  between two words, which nothing else in the pattern can also match).

Patterns that read prose (prompt injection) run on NFKC-normalised, casefolded text, so they are
written in lower case; all others run on NFKC text and keep their case.

>>> bool(PRIVATE_KEY_BLOCK.search("-----BEGIN EC PRIVATE KEY-----\\nMHcCAQEEIBYr9B3zVxOk0Lh4S7sWm2qJ"))
True
>>> IBAN_LENGTHS["DE"], IBAN_LENGTHS["GB"], IBAN_LENGTHS["NO"]
(22, 22, 15)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

# --- PII -------------------------------------------------------------------------------------

#: An e-mail address: a local part, ``@``, dotted domain labels and a letters-only top level.
EMAIL = re.compile(
    r"(?<![\w.%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}"
    r"@(?:[A-Za-z0-9][A-Za-z0-9\-]{0,62}\.){1,8}(?P<tld>[A-Za-z]{2,24})(?![\w\-]|\.[A-Za-z0-9])"
)

#: "Top-level domains" that are really file suffixes (``icon@2x.png``): an address never ends so.
FILE_SUFFIXES: frozenset[str] = frozenset(
    {"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "heic", "avif"}
)

# A number glued to a word, a decimal, a path, a currency sign, an id marker or the end of another
# number ("5390 0754 7034") is not a phone.
_NO_NUMBER_BEFORE = r"(?<![\w.,+\-/#$€£¥])(?<![0-9][ \-./])"
_NO_NUMBER_AFTER = r"(?![\w%€£¥]|[.,\-/][0-9])"

#: ``+`` and a country code, then digits, spaces, dots, dashes and parentheses, ending on a digit.
PHONE_INTERNATIONAL = re.compile(r"(?<![\w+])\+[1-9][0-9 ().\-]{6,22}[0-9]" + _NO_NUMBER_AFTER)

#: North American numbers: ``(415) 555-2671``, ``415-555-2671``, ``415.555.2671``, ``1 800 555 0199``
#: (one separator throughout when the area code has no parentheses).
PHONE_NANP = re.compile(
    _NO_NUMBER_BEFORE + r"(?:1[ .\-]?)?"
    r"(?:\((?P<area_p>[2-9][0-8][0-9])\)[ \-]?|(?P<area>[2-9][0-8][0-9])(?P<sep>[ .\-]))"
    r"(?P<exchange>[2-9][0-9]{2})(?(sep)(?P=sep)|[ .\-])[0-9]{4}" + _NO_NUMBER_AFTER
)

#: European national numbers with a trunk ``0``: ``020 7946 0958``, ``06 12 34 56 78``,
#: ``030 12345678``, ``089/1234567`` (separators required: a bare run of digits is an id).
PHONE_NATIONAL = re.compile(
    _NO_NUMBER_BEFORE + r"(?P<area>0[1-9][0-9]{0,4})(?P<rest>(?:[ \-/][0-9]{2,8}){1,4})" + _NO_NUMBER_AFTER
)

#: Words that make a phone-shaped number an identifier when they stand just before it.
ID_CONTEXT = re.compile(
    r"(?i:\b(?:order|invoice|ref|reference|sku|ticket|tracking|isbn|serial|build|version|txn"
    r"|transaction|id|po|confirmation|case)\b\W{0,4})$"
)

#: A date inside a number-shaped span (``2024-01-15``): not a phone.
DATE_LIKE = re.compile(r"(?:19|20)[0-9]{2}[\-./ ](?:0[1-9]|1[0-2])[\-./ ][0-3][0-9]")

#: 13 to 19 digits, optionally split by single spaces or dashes.
CARD_CANDIDATE = re.compile(_NO_NUMBER_BEFORE + r"[0-9](?:[ \-]?[0-9]){12,18}(?![\w€£¥]|[.,\-][0-9])")

#: Issuer prefixes (IIN ranges, as equal-length digit strings) and the lengths each issues.
CARD_ISSUERS: tuple[tuple[str, str, str, frozenset[int]], ...] = (
    ("visa", "4", "4", frozenset({13, 16, 19})),
    ("mastercard", "51", "55", frozenset({16})),
    ("mastercard", "2221", "2720", frozenset({16})),
    ("amex", "34", "34", frozenset({15})),
    ("amex", "37", "37", frozenset({15})),
    ("discover", "6011", "6011", frozenset({16, 17, 18, 19})),
    ("discover", "644", "649", frozenset({16, 17, 18, 19})),
    ("discover", "65", "65", frozenset({16, 17, 18, 19})),
    ("unionpay", "62", "62", frozenset({16, 17, 18, 19})),
    ("diners", "300", "305", frozenset({14, 16, 17, 18, 19})),
    ("diners", "36", "36", frozenset({14, 16, 17, 18, 19})),
    ("diners", "38", "39", frozenset({16, 17, 18, 19})),
    ("jcb", "3528", "3589", frozenset({16, 17, 18, 19})),
    ("maestro", "50", "50", frozenset({13, 14, 15, 16, 17, 18, 19})),
    ("maestro", "56", "58", frozenset({13, 14, 15, 16, 17, 18, 19})),
    ("maestro", "6304", "6304", frozenset({16, 17, 18, 19})),
    ("maestro", "67", "67", frozenset({13, 14, 15, 16, 17, 18, 19})),
    ("mir", "2200", "2204", frozenset({16, 17, 18, 19})),
)

#: How printed card numbers are grouped: all fours (a shorter last group allowed), or Amex/Diners.
CARD_GROUPINGS: frozenset[tuple[int, ...]] = frozenset({(4, 6, 5), (4, 6, 4)})

#: An IBAN, compact (``DE89370400440532013000``) or printed in groups of four.
IBAN_CANDIDATE = re.compile(
    r"(?<![A-Za-z0-9])(?P<iban>[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?))"
    r"(?![A-Za-z0-9])"
)

#: IBAN length by country (SWIFT IBAN registry).
IBAN_LENGTHS: Mapping[str, int] = MappingProxyType(
    {
        "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
        "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
        "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
        "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
        "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
        "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
        "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
        "PL": 28, "PS": 29, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18,
        "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
        "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
    }
)  # fmt: skip

#: ``AAA-GG-SSSS``, dashes only: with spaces or none, nine digits are too often something else.
SSN_DASHED = re.compile(
    r"(?<![\w\-])(?P<area>[0-9]{3})-(?P<group>[0-9]{2})-(?P<serial>[0-9]{4})(?![\w]|-[0-9])"
)

#: Nine digits in any common spacing, right after a label that says they are an SSN.
SSN_LABELLED = re.compile(
    r"(?i:\b(?:ssn|social\s+security(?:\s+(?:number|no\.?|#))?)\b)\W{0,6}"
    r"(?P<area>[0-9]{3})[ \-]?(?P<group>[0-9]{2})[ \-]?(?P<serial>[0-9]{4})(?![0-9])"
)

#: SSNs that pass the range rules yet were never issued (published on a wallet card, an ad).
SSN_NEVER_ISSUED: frozenset[str] = frozenset({"078051120", "219099999"})

# --- Secrets ---------------------------------------------------------------------------------

#: Substrings one of which every match of :data:`CLOUD_KEY` contains (a cheap test before the regex).
CLOUD_KEY_MARKERS: tuple[str, ...] = ("AKIA", "ASIA", "ABIA", "ACCA", "AIza", "AccountKey=")

#: AWS access key ids (long-term ``AKIA``, temporary ``ASIA``), Google API keys, Azure storage keys.
CLOUD_KEY = re.compile(
    r"(?<![A-Za-z0-9])(?:(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|AIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])"
    r"|AccountKey=[A-Za-z0-9+/]{86}==)"
)

#: Substrings one of which every match of :data:`AWS_SECRET_IN_CONTEXT` contains.
AWS_SECRET_MARKERS: tuple[str, ...] = ("ecret", "ECRET")

#: An AWS secret access key (40 base64 characters) right after a name that says it is one.
AWS_SECRET_IN_CONTEXT = re.compile(
    r"(?i:aws[\w\-]{0,20}?secret|secret[_\- ]?access[_\- ]?key)[\w\-]{0,20}[\"']?\s{0,3}[:=]\s{0,3}[\"']?"
    r"(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)

#: Substrings one of which every API token below contains.
API_KEY_MARKERS: tuple[str, ...] = (
    "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "k_live_", "sk-", "hf_", "glpat-",
    "npm_", "SG.",
)  # fmt: skip

#: Tokens of API vendors, by their published prefixes (GitHub, Slack, Stripe, OpenAI, Anthropic,
#: Hugging Face, GitLab, npm, SendGrid). Each vendor's named group holds the token's random part,
#: which the check requires to mix character classes (placeholders such as ``xxxx…`` do not).
API_KEY = re.compile(
    r"(?<![\w\-])(?:gh[pousr]_(?P<github>[A-Za-z0-9]{36})"
    r"|github_pat_(?P<github_pat>[A-Za-z0-9]{22}_[A-Za-z0-9]{59})"
    r"|xox[baprse]-(?:[0-9]{1,15}-){1,3}(?P<slack>[A-Za-z0-9]{8,64})"
    r"|[sr]k_live_(?P<stripe>[A-Za-z0-9]{24,99})"
    r"|sk-ant-[a-z]{3,8}[0-9]{2}-(?P<anthropic>[A-Za-z0-9_\-]{32,200})"
    r"|sk-(?:proj-|svcacct-|admin-)?(?P<openai>[A-Za-z0-9_\-]{32,200})"
    r"|hf_(?P<huggingface>[A-Za-z]{34})"
    r"|glpat-(?P<gitlab>[A-Za-z0-9_\-]{20})"
    r"|npm_(?P<npm>[A-Za-z0-9]{36})"
    r"|SG\.(?P<sendgrid>[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}))(?![\w\-])"
)

#: A PEM private key: the ``BEGIN`` line, optional ``Name: value`` headers, then key material.
#: The line alone (in a tutorial, say) is not a key: at least 32 base64 characters must follow.
PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN (?:[A-Z0-9]{1,12} ){0,3}PRIVATE KEY(?: BLOCK)?-----[ \t]*\r?\n\s{0,8}"
    r"(?:[A-Za-z][A-Za-z\-]{0,40}: ?[^\r\n]{0,200}\r?\n\s{0,8}){0,4}[A-Za-z0-9+/=]{32}"
)

#: Three base64url parts; the header must start ``{"`` (``eyJ``), which every JWT serializer writes.
JWT_CANDIDATE = re.compile(
    r"(?<![A-Za-z0-9_\-])(?P<header>eyJ[A-Za-z0-9_\-]{8,2000})\.[A-Za-z0-9_\-]{2,50000}"
    r"\.[A-Za-z0-9_\-]{0,4000}(?![A-Za-z0-9_\-])"
)

# --- Prompt injection (on NFKC + casefolded text) -------------------------------------------


def _family(anchors: tuple[str, ...], *phrases: str) -> tuple[tuple[str, ...], re.Pattern[str]]:
    # Scanning for one family's phrases costs ~10 ns a character; testing its anchors with `in`
    # costs ~0.5: most texts hold none of a family's anchors and skip its regex.
    return anchors, re.compile("|".join(f"(?:{phrase})" for phrase in phrases))


_OVERRIDE_VERBS = (
    "ignore",
    "disregard",
    "forget",
    "skip",
    "override",
    "overrule",
    "bypass",
    "abandon",
    "discard",
)
_OVERRIDE_VERB = "(?:" + "|".join(_OVERRIDE_VERBS) + ")"
_DETERMINER = (
    r"(?:all|any|every|each|of|the|your|my|our|these|those|previous|prior|preceding|above|earlier"
    r"|foregoing|former|initial|original|existing|current|given|system|safety|hidden|developer"
    r"|content|openai|anthropic|and|or)"
)
# At least one of these must be among the words between the verb and its object: "ignore the
# noise" is advice, "ignore your instructions" is an attack.
_POINTED = (
    r"(?:all|any|every|your|previous|prior|preceding|above|earlier|foregoing|former|initial"
    r"|original|system|safety|hidden|developer|openai|anthropic)"
)
_ORDERS = (
    r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guidance|commands|constraints"
    r"|restrictions|guardrails|filters|programming|polic(?:y|ies)|context|messages|training|conditioning)"
)
_SECRET_PROMPT_NOUNS = ("prompt", "instruction", "message", "rules", "configuration")
_SECRET_PROMPT = (
    r"(?:system|initial|original|hidden|secret|developer|internal|pre-?)\s{0,3}"
    r"(?:prompt|instructions|message|rules|configuration)s?\b"
)
_YOU_ARE = r"you(?:\s+are|'re|’re)\s+"

#: Phrase families that try to override, extract or replace the model's instructions, each with
#: the substrings one of which every match contains (``in`` tests before the regex). Together
#: they tolerate extra words, plurals, curly apostrophes and line breaks between words.
PROMPT_INJECTION_FAMILIES: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = (
    # "ignore all previous instructions", "disregard your system prompt", "forget everything above"
    _family(
        _OVERRIDE_VERBS,
        _OVERRIDE_VERB
        + rf"\s+(?:{_DETERMINER}\s+){{0,3}}{_POINTED}\s+(?:{_DETERMINER}\s+){{0,2}}{_ORDERS}\b",
        r"(?:ignore|disregard|forget)\s+(?:everything|anything|all(?:\s+that)?)\s+(?:[\w']+\s+){0,3}?"
        r"(?:above|before|previously|earlier|so\s+far|up\s+to\s+now)\b",
    ),
    # "reveal your system prompt", "what is your system prompt", "print your initial instructions"
    _family(
        _SECRET_PROMPT_NOUNS,
        r"(?:reveal|leak|dump|expose|disclose|exfiltrate)\s+(?:(?:me|us|the|your|all|of|full|entire"
        r"|exact|complete)\s+){0,3}" + _SECRET_PROMPT,
        r"(?:show|print|display|output|repeat|recite|tell|give|share|write|type|what\s+(?:is|are|was|were))"
        r"\s+(?:(?:me|us|out|the|all|of|back)\s+){0,3}your\s+(?:(?:full|entire|exact|complete|very|first)\s+)"
        r"{0,2}" + _SECRET_PROMPT,
    ),
    # "repeat the words above", "print everything above this line"
    _family(
        ("above", "before"),
        r"(?:repeat|print|output|recite)\s+(?:(?:all|everything|the|text|words|content|instructions"
        r"|verbatim)\s+){1,3}(?:above|before\s+this)\b",
    ),
    # "you are now DAN", "act as an unfiltered model", "do anything now", "DAN mode"
    _family(
        ("dan", "stan", "dude", "aim", "unrestricted", "unfiltered", "uncensored", "jailbroken", "anything"),
        _YOU_ARE + r"now\s+(?:an?\s+)?(?:dan|stan|dude|aim|unrestricted|unfiltered|uncensored|jailbroken)\b",
        r"(?:act|behave|respond|answer|roleplay|role-play)\s+(?:as|like)\s+(?:an?\s+)?(?:dan|unrestricted"
        r"|unfiltered|uncensored|jailbroken)\b",
        r"do\s+anything\s+now\b|\bdan\s+mode\b",
    ),
    # "ChatGPT with Developer Mode enabled", "you are now in developer mode", "(Developer Mode Output)"
    _family(
        ("developer",),
        r"(?:chatgpt|gpt|claude|gemini|llama|bard|ai|assistant|model|you)\s+(?:with|in|are\s+in"
        r"|are\s+now\s+in|'re\s+in|’re\s+in|'re\s+now\s+in|’re\s+now\s+in)\s+(?:the\s+)?developer\s+mode\b",
        r"(?:simulate|emulate|pretend\s+to\s+be\s+in)\s+developer\s+mode\b|developer\s+mode\s+output\b",
    ),
    # "you are no longer bound by", "pretend you have no restrictions"
    _family(
        ("bound", "restricted", "limited", "constrained"),
        _YOU_ARE + r"(?:now\s+)?(?:no\s+longer|not)\s+(?:bound|restricted|limited|constrained)\s+by\b",
    ),
    _family(
        ("pretend", "imagine"),
        r"(?:pretend|imagine)\s+(?:that\s+)?you\s+(?:have\s+no|(?:do\s+not|don't|don’t)\s+have(?:\s+any)?)\s+"
        r"(?:[\w']+\s+){0,2}?(?:restrictions|rules|limits|limitations|filters|guidelines|policies|ethics)\b",
    ),
    # chat-template tokens and fake instruction headers pasted into a user turn
    _family(
        ("<|", "<<sys"),
        r"<\|im_start\|>\s*system|<\|system\|>|<<sys>>|<\|start_header_id\|>\s*system",
    ),
    _family(
        ("instruction",),
        r"(?:^|\n)[ \t]*(?:#{1,3}[ \t]*)?(?:new|updated|revised|real)\s+(?:system\s+)?instructions?\s*:",
    ),
)
