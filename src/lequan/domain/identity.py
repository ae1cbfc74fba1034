"""Validate, normalise and mask the personal data a person registers with.

People register with their real name, their 18-character PRC resident ID
number (GB 11643) and a mainland mobile phone. These rules run before any
value is encrypted or blind-indexed, so that one person always produces the
same normalised value (and therefore the same blind index). Everything here
is pure: no I/O and no clock reads, so "born in the future" is a service's
check, not this module's.

Personal data never appears in an error message: a message names the rule
that failed, never the value that failed it. Every output the platform shows
uses the ``mask_*`` functions, which never return the clear value.
"""

from __future__ import annotations

import unicodedata
from datetime import date

from lequan.domain.errors import InvalidInput

__all__ = [
    "ID_NUMBER_LENGTH",
    "NAME_LENGTH_MAX",
    "PHONE_LENGTH",
    "id_number_birth_date",
    "id_number_check_digit",
    "id_number_region",
    "mask_id_number",
    "mask_name",
    "mask_phone",
    "normalize_id_number",
    "normalize_name",
    "normalize_phone",
    "synthetic_id_number",
]

ID_NUMBER_LENGTH = 18
PHONE_LENGTH = 11
NAME_LENGTH_MAX = 64
BIRTH_YEAR_MIN = 1900

# ISO 7064 MOD 11-2 as GB 11643 applies it: weight i is 2**(17 - i) mod 11.
_CHECK_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_MAP = "10X98765432"
_ASCII_DIGITS = frozenset("0123456789")
_MOBILE_SECOND_DIGITS = frozenset("3456789")
# Longest raw phone worth looking at: "+86 138-1234-5678" and friends. A bound
# keeps the work on hostile input small.
_PHONE_RAW_LENGTH_MAX = 32
# Control, format (zero-width and bidi marks), surrogate, line and paragraph
# separators: invisible or layout-breaking, and a way to make two names that
# look the same differ. Unassigned and private-use code points stay allowed,
# because rare characters in names (生僻字) are often encoded there.
_NAME_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit() also accepts full-width and other scripts' digits.
    return all(character in _ASCII_DIGITS for character in text)


def _invalid_id(rule: str, message: str) -> InvalidInput:
    return InvalidInput("invalid_id_number", message, details={"rule": rule})


def id_number_check_digit(first17: str) -> str:
    """The check character (0-9 or X) of an ID number's first 17 digits.

    Raises ``ValueError`` when ``first17`` is not 17 ASCII digits: callers
    (tests, the demo's generator) pass values they built themselves.
    """
    if len(first17) != ID_NUMBER_LENGTH - 1 or not _is_ascii_digits(first17):
        raise ValueError("first17 must be 17 ASCII digits")
    total = sum(int(digit) * weight for digit, weight in zip(first17, _CHECK_WEIGHTS, strict=True))
    return _CHECK_MAP[total % 11]


def _birth_date_or_none(yyyymmdd: str) -> date | None:
    year, month, day = int(yyyymmdd[0:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8])
    if year < BIRTH_YEAR_MIN:
        return None
    try:
        return date(year, month, day)
    except ValueError:
        return None


def normalize_id_number(raw: str) -> str:
    """Validate an 18-character resident ID number and return its canonical form.

    Surrounding whitespace is dropped and a lower-case check character ``x``
    becomes ``X``, so the same person always yields the same blind index.
    Rules, checked in this order, each reported with ``details["rule"]``:
    ``length`` (18 characters), ``characters`` (17 digits, then a digit or X),
    ``birth_date`` (characters 7-14 a real date, year 1900 or later) and
    ``check_digit`` (ISO 7064 MOD 11-2).
    """
    value = raw.strip()
    if len(value) != ID_NUMBER_LENGTH:
        raise _invalid_id(
            "length",
            f"an ID number has {ID_NUMBER_LENGTH} characters, this one has {len(value)}",
        )
    value = value[:-1] + value[-1].upper()
    first17, check = value[:-1], value[-1]
    if not _is_ascii_digits(first17) or not (check in _ASCII_DIGITS or check == "X"):
        raise _invalid_id(
            "characters",
            "an ID number is 17 digits followed by a digit or X",
        )
    if _birth_date_or_none(value[6:14]) is None:
        raise _invalid_id(
            "birth_date",
            "the birth date in the ID number (characters 7 to 14) is not a real date "
            f"in {BIRTH_YEAR_MIN} or later",
        )
    if id_number_check_digit(first17) != check:
        raise _invalid_id(
            "check_digit",
            "the ID number's check digit does not match: a character is mistyped",
        )
    return value


def id_number_region(id_number: str) -> str:
    """The six-digit GB/T 2260 region code an ID number was issued under.

    The region is where the number was first issued, not where the person
    lives now; eligibility by residence needs another source. The argument is
    validated as ``normalize_id_number`` does.
    """
    return normalize_id_number(id_number)[:6]


def id_number_birth_date(id_number: str) -> date:
    """The date of birth an ID number carries (validated as ``normalize_id_number`` does)."""
    birth = _birth_date_or_none(normalize_id_number(id_number)[6:14])
    assert birth is not None, "normalize_id_number checked the birth date"
    return birth


def synthetic_id_number(region_code: str, birth: date, serial: int) -> str:
    """Build a valid ID number for demos and tests; no real person is looked up.

    ``serial`` is the three-digit sequence code (0-999; odd means male in the
    standard). Raises ``ValueError`` on arguments no ID number can carry.
    """
    if len(region_code) != 6 or not _is_ascii_digits(region_code):
        raise ValueError("region_code must be 6 ASCII digits")
    if birth.year < BIRTH_YEAR_MIN:
        raise ValueError(f"birth must be in {BIRTH_YEAR_MIN} or later")
    if not 0 <= serial <= 999:
        raise ValueError("serial must be between 0 and 999")
    first17 = f"{region_code}{birth:%Y%m%d}{serial:03d}"
    return first17 + id_number_check_digit(first17)


def normalize_phone(raw: str) -> str:
    """Validate a mainland mobile number and return its 11 digits.

    Spaces and dashes are tolerated anywhere, and so is a leading country
    code (``+86``, ``0086`` or ``86``). The number itself starts with 1 and
    its second digit is 3-9. Each failure names its rule in
    ``details["rule"]``: ``length``, ``characters`` or ``prefix``.
    """
    if len(raw) > _PHONE_RAW_LENGTH_MAX:
        raise InvalidInput(
            "invalid_phone",
            f"a phone number has at most {_PHONE_RAW_LENGTH_MAX} characters with separators",
            details={"rule": "length"},
        )
    value = "".join(character for character in raw if not (character.isspace() or character == "-"))
    for country_code in ("+86", "0086"):
        if value.startswith(country_code):
            value = value[len(country_code) :]
            break
    else:
        # "86" alone is ambiguous with the digits of a number, so it counts as
        # a country code only in front of a full 11-digit number.
        if len(value) == PHONE_LENGTH + 2 and value.startswith("86"):
            value = value[2:]
    if not _is_ascii_digits(value):
        raise InvalidInput(
            "invalid_phone",
            "a phone number holds only digits, spaces, dashes and a leading +86",
            details={"rule": "characters"},
        )
    if len(value) != PHONE_LENGTH:
        raise InvalidInput(
            "invalid_phone",
            f"a mainland mobile number has {PHONE_LENGTH} digits, this one has {len(value)}",
            details={"rule": "length"},
        )
    if value[0] != "1" or value[1] not in _MOBILE_SECOND_DIGITS:
        raise InvalidInput(
            "invalid_phone",
            "a mainland mobile number starts with 13 to 19",
            details={"rule": "prefix"},
        )
    return value


def normalize_name(raw: str) -> str:
    """Validate a real name and return it trimmed of surrounding whitespace.

    Names are kept as written (no case folding, no Unicode normalisation) so
    that they match the ID card; only invisible and layout-breaking
    characters are refused. Rules in ``details["rule"]``: ``length`` (1 to
    64 characters) and ``characters``.
    """
    value = raw.strip()
    if not 1 <= len(value) <= NAME_LENGTH_MAX:
        raise InvalidInput(
            "invalid_name",
            f"a name has 1 to {NAME_LENGTH_MAX} characters, this one has {len(value)}",
            details={"rule": "length"},
        )
    if any(unicodedata.category(character) in _NAME_FORBIDDEN_CATEGORIES for character in value):
        raise InvalidInput(
            "invalid_name",
            "a name may not contain control, format or line-separator characters",
            details={"rule": "characters"},
        )
    return value


def mask_id_number(id_number: str) -> str:
    """Show an ID number as ``310***********1234``: first 3, 11 stars, last 4.

    Only the shape is checked (17 digits then a digit or X), not the check
    digit, so stored values always mask the same way. Anything of another
    shape becomes 18 stars: the clear value is never returned.
    """
    value = id_number.strip()
    if (
        len(value) == ID_NUMBER_LENGTH
        and _is_ascii_digits(value[:-1])
        and (value[-1] in _ASCII_DIGITS or value[-1] in "xX")
    ):
        return value[:3] + "*" * 11 + value[-4:].upper()
    return "*" * ID_NUMBER_LENGTH


def mask_phone(phone: str) -> str:
    """Show a mobile number as ``138****5678``; anything not a valid mobile becomes 11 stars."""
    try:
        value = normalize_phone(phone)
    except InvalidInput:
        return "*" * PHONE_LENGTH
    return value[:3] + "****" + value[-4:]


def mask_name(name: str) -> str:
    """Show a name as its first character and a star for each other one (``张*``).

    A one-character name, or an empty one, becomes a single star, so the
    clear value is never returned.
    """
    value = name.strip()
    if len(value) <= 1:
        return "*"
    return value[0] + "*" * (len(value) - 1)
