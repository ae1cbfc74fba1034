"""Identity rules: valid and invalid ID numbers, phones and names, and masks that never leak."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lequan.domain.errors import InvalidInput
from lequan.domain.identity import (
    id_number_birth_date,
    id_number_check_digit,
    id_number_region,
    mask_id_number,
    mask_name,
    mask_phone,
    normalize_id_number,
    normalize_name,
    normalize_phone,
    synthetic_id_number,
)

VALID_ID = "310101199001011234"  # check digit 4
VALID_X_ID = "31010119900101008X"  # check digit X
DIGITS = "0123456789"

regions = st.sampled_from(["110000", "310101", "310115", "440000", "650000"])
births = st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31))
serials = st.integers(min_value=0, max_value=999)


@st.composite
def valid_ids(draw: st.DrawFn) -> str:
    return synthetic_id_number(draw(regions), draw(births), draw(serials))


def _rule(error: pytest.ExceptionInfo[InvalidInput]) -> str:
    rule = error.value.details["rule"]
    assert isinstance(rule, str)
    return rule


# ID numbers: valid forms


def test_known_id_numbers_validate() -> None:
    assert normalize_id_number(VALID_ID) == VALID_ID
    assert normalize_id_number(VALID_X_ID) == VALID_X_ID


# GB 11643's check table, pinned by numbers built without it: the property tests
# below make their numbers with the module's own table, so a table with two
# check characters swapped would pass them all.
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


@pytest.mark.parametrize(
    ("id_number", "remainder"),
    [
        ("11010519491231002X", 2),  # the standard's worked example
        ("310104198001010041", 0),  # remainder 0: check character 1
        ("310104198001010180", 1),  # remainder 1: check character 0
        ("310101199001011234", 8),
    ],
)
def test_id_numbers_of_every_kind_of_remainder_validate(id_number: str, remainder: int) -> None:
    total = sum(int(d) * w for d, w in zip(id_number[:17], _WEIGHTS, strict=True))
    assert total % 11 == remainder
    # ISO 7064 MOD 11-2 written another way: the check value is (12 - remainder) mod 11.
    value = (12 - remainder) % 11
    assert id_number[-1] == ("X" if value == 10 else str(value))
    assert normalize_id_number(id_number) == id_number
    assert id_number_check_digit(id_number[:17]) == id_number[-1]


def test_the_standards_other_example_has_its_published_check_digit() -> None:
    # Born in 1880, before the birth years a registration accepts: the table alone.
    assert id_number_check_digit("44052418800101001") == "4"


@pytest.mark.parametrize("id_number", ["310104198001010040", "310104198001010181"])
def test_check_characters_of_remainders_0_and_1_are_not_interchangeable(id_number: str) -> None:
    with pytest.raises(InvalidInput) as error:
        normalize_id_number(id_number)
    assert _rule(error) == "check_digit"


def test_id_number_is_trimmed_and_its_x_uppercased() -> None:
    assert normalize_id_number("  31010119900101008x\t\n") == VALID_X_ID


def test_check_digit_covers_every_value_including_x() -> None:
    assert id_number_check_digit(VALID_ID[:17]) == "4"
    assert id_number_check_digit(VALID_X_ID[:17]) == "X"
    # MOD 11-2 maps the 11 residues onto 0-9 and X; all of them occur.
    seen = {id_number_check_digit(f"31010119900101{serial:03d}") for serial in range(200)}
    assert seen == set("10X98765432")


@pytest.mark.parametrize(
    "first17", ["", "1234567890123456", "123456789012345678", "3101011990010112A"]
)
def test_check_digit_refuses_what_is_not_17_digits(first17: str) -> None:
    with pytest.raises(ValueError, match="17 ASCII digits"):
        id_number_check_digit(first17)


def test_region_and_birth_date_are_read_from_the_number() -> None:
    assert id_number_region(VALID_ID) == "310101"
    assert id_number_birth_date(VALID_ID) == date(1990, 1, 1)
    assert id_number_birth_date("31010119900101008x") == date(1990, 1, 1)


def test_region_and_birth_date_validate_their_argument() -> None:
    with pytest.raises(InvalidInput):
        id_number_region("310101199001011235")
    with pytest.raises(InvalidInput):
        id_number_birth_date("310101")


def test_leap_day_is_a_real_birth_date() -> None:
    id_number = synthetic_id_number("310101", date(2000, 2, 29), 7)
    assert id_number_birth_date(id_number) == date(2000, 2, 29)


# ID numbers: every rejection rule


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "31010119900101123",  # 17
        "3101011990010112345",  # 19
        "310101900101123",  # the old 15-digit form is not accepted
    ],
)
def test_id_number_of_wrong_length_is_refused(raw: str) -> None:
    with pytest.raises(InvalidInput) as error:
        normalize_id_number(raw)
    assert error.value.code == "invalid_id_number"
    assert _rule(error) == "length"
    assert "18" in error.value.message


@pytest.mark.parametrize(
    "raw",
    [
        "31010119900101123A",  # check character neither digit nor X
        "3101011990010112X4",  # X only in the last place
        "31010119900101 234",  # inner space
        "310101199001011２34",  # full-width digit
        "-31010119900101123",
        "３１０１０１１９９００１０１１２３４",  # all full-width
    ],
)
def test_id_number_with_wrong_characters_is_refused(raw: str) -> None:
    with pytest.raises(InvalidInput) as error:
        normalize_id_number(raw)
    assert error.value.code == "invalid_id_number"
    assert _rule(error) == "characters"


@pytest.mark.parametrize(
    "birth",
    [
        "18991231",  # before 1900
        "00000101",
        "19900001",  # month 0
        "19901301",  # month 13
        "19900100",  # day 0
        "19900230",  # 30 February
        "19000229",  # 1900 was not a leap year
        "19900431",  # 31 April
    ],
)
def test_id_number_with_impossible_birth_date_is_refused(birth: str) -> None:
    first17 = f"310101{birth}123"
    raw = first17 + id_number_check_digit(first17)  # a right check digit, a wrong date
    with pytest.raises(InvalidInput) as error:
        normalize_id_number(raw)
    assert error.value.code == "invalid_id_number"
    assert _rule(error) == "birth_date"


def test_id_number_with_wrong_check_digit_is_refused() -> None:
    with pytest.raises(InvalidInput) as error:
        normalize_id_number("310101199001011235")
    assert error.value.code == "invalid_id_number"
    assert _rule(error) == "check_digit"


def test_id_number_errors_never_carry_the_number() -> None:
    for raw in ["310101199001011235", "31010118990101123X", "31010119900101123A", VALID_ID + "0"]:
        with pytest.raises(InvalidInput) as error:
            normalize_id_number(raw)
        text = f"{error.value} {error.value!r} {error.value.details}"
        assert raw not in text
        assert raw[6:14] not in text  # not even the birth date


@given(valid_ids())
def test_every_synthetic_id_validates(id_number: str) -> None:
    assert normalize_id_number(id_number) == id_number
    assert normalize_id_number(id_number.lower()) == id_number


@given(regions, births, serials)
def test_synthetic_id_carries_its_region_and_birth(region: str, birth: date, serial: int) -> None:
    id_number = synthetic_id_number(region, birth, serial)
    assert id_number_region(id_number) == region
    assert id_number_birth_date(id_number) == birth
    assert id_number[14:17] == f"{serial:03d}"


@given(valid_ids(), st.integers(min_value=0, max_value=16), st.integers(min_value=1, max_value=9))
def test_any_single_digit_change_fails(id_number: str, position: int, shift: int) -> None:
    changed_digit = str((int(id_number[position]) + shift) % 10)
    changed = id_number[:position] + changed_digit + id_number[position + 1 :]
    with pytest.raises(InvalidInput) as error:
        normalize_id_number(changed)
    # A change in the birth date may break the date before the check digit is reached.
    assert _rule(error) in {"check_digit", "birth_date"}
    if not 6 <= position < 14:
        assert _rule(error) == "check_digit"


@given(valid_ids(), st.sampled_from(list("0123456789X")))
def test_any_other_check_character_fails(id_number: str, check: str) -> None:
    if check == id_number[-1]:
        return
    with pytest.raises(InvalidInput) as error:
        normalize_id_number(id_number[:-1] + check)
    assert _rule(error) == "check_digit"


@pytest.mark.parametrize(
    ("region", "birth", "serial"),
    [
        ("31010", date(1990, 1, 1), 1),
        ("31010a", date(1990, 1, 1), 1),
        ("310101", date(1899, 12, 31), 1),
        ("310101", date(1990, 1, 1), -1),
        ("310101", date(1990, 1, 1), 1000),
    ],
)
def test_synthetic_id_refuses_impossible_arguments(region: str, birth: date, serial: int) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        synthetic_id_number(region, birth, serial)


# Phones


@pytest.mark.parametrize(
    "raw",
    [
        "13812345678",
        " 13812345678 ",
        "138 1234 5678",
        "138-1234-5678",
        "+8613812345678",
        "+86 138 1234 5678",
        "+86-138-1234-5678",
        "8613812345678",
        "86 138 1234 5678",
        "008613812345678",
    ],
)
def test_phone_forms_are_normalised(raw: str) -> None:
    assert normalize_phone(raw) == "13812345678"


@pytest.mark.parametrize("second", list("3456789"))
def test_every_mobile_prefix_is_accepted(second: str) -> None:
    assert normalize_phone(f"1{second}012345678") == f"1{second}012345678"


def test_a_phone_of_exactly_the_raw_length_limit_is_read() -> None:
    padded = "+86 138-1234-5678".center(32)
    assert len(padded) == 32
    assert normalize_phone(padded) == "13812345678"
    with pytest.raises(InvalidInput) as error:
        normalize_phone(padded + " ")
    assert _rule(error) == "length"


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("", "length"),
        ("1381234567", "length"),  # 10 digits
        ("138123456789", "length"),  # 12 digits
        ("861381234567", "length"),  # "86" before 10 digits is not a country code
        ("+861381234567", "length"),
        ("1" * 40, "length"),  # longer than any phone with separators
        ("23812345678", "prefix"),
        ("12812345678", "prefix"),
        ("11812345678", "prefix"),
        ("02112345678", "prefix"),
        ("+1 13812345678", "characters"),
        ("(138)12345678", "characters"),
        ("138.1234.5678", "characters"),
        ("1381234567８", "characters"),  # full-width digit
        ("+86+8613812345678", "characters"),
    ],
)
def test_bad_phones_are_refused(raw: str, rule: str) -> None:
    with pytest.raises(InvalidInput) as error:
        normalize_phone(raw)
    assert error.value.code == "invalid_phone"
    assert _rule(error) == rule
    if raw:
        assert raw not in error.value.message


# Names


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("张三", "张三"),
        ("  欧阳娜娜\u3000", "欧阳娜娜"),  # the ideographic space is whitespace too
        ("阿依古丽·买买提", "阿依古丽·买买提"),
        ("Li Lei", "Li Lei"),
        ("李", "李"),
        ("名" * 64, "名" * 64),
    ],
)
def test_names_are_trimmed(raw: str, expected: str) -> None:
    assert normalize_name(raw) == expected


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("", "length"),
        ("   ", "length"),
        ("名" * 65, "length"),
        ("张\n三", "characters"),
        ("张\t三", "characters"),
        ("张\x00三", "characters"),
        ("张\u200b三", "characters"),  # zero-width space
        ("张\u202e三", "characters"),  # right-to-left override
        ("张\u2028三", "characters"),  # line separator
    ],
)
def test_bad_names_are_refused(raw: str, rule: str) -> None:
    with pytest.raises(InvalidInput) as error:
        normalize_name(raw)
    assert error.value.code == "invalid_name"
    assert _rule(error) == rule


# Masks


def test_masks_have_the_documented_shapes() -> None:
    assert mask_id_number("310101199001011234") == "310***********1234"
    assert mask_id_number("31010119900101008x") == "310***********008X"
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("+86 138-1234-5678") == "138****5678"
    assert mask_name("张三") == "张*"
    assert mask_name("欧阳娜娜") == "欧***"
    assert mask_name("李") == "*"
    assert mask_name("") == "*"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "1",
        "310",
        "3101011234",
        "31010119900101123",
        "3101011990010112345",
        "ABCDEFGHIJKLMNOPQR",
    ],
)
def test_malformed_id_numbers_mask_to_stars(raw: str) -> None:
    assert mask_id_number(raw) == "*" * 18


@pytest.mark.parametrize(
    "raw", ["31010119900A011234", "3101011990010112X4", "X10101199001011234", "31010119900101123A"]
)
def test_an_id_number_of_18_characters_with_a_letter_inside_masks_to_stars(raw: str) -> None:
    assert mask_id_number(raw) == "*" * 18


@pytest.mark.parametrize("raw", ["", "1", "138", "1381234567", "23812345678", "phone number"])
def test_malformed_phones_mask_to_stars(raw: str) -> None:
    assert mask_phone(raw) == "*" * 11


@given(valid_ids())
def test_id_mask_hides_the_middle(id_number: str) -> None:
    masked = mask_id_number(id_number)
    assert len(masked) == 18
    assert masked == id_number[:3] + "*" * 11 + id_number[-4:]
    assert id_number[3:14] not in masked
    assert id_number[6:14] not in masked  # the birth date


@given(st.text(max_size=40))
def test_id_mask_never_returns_the_clear_value(raw: str) -> None:
    masked = mask_id_number(raw)
    assert len(masked) == 18
    assert masked[3:14] == "*" * 11
    if raw.strip("*"):
        assert masked != raw


@given(st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True))
def test_phone_mask_hides_the_middle(phone: str) -> None:
    masked = mask_phone(phone)
    assert masked == phone[:3] + "****" + phone[-4:]


@given(st.text(max_size=40))
def test_phone_mask_never_returns_the_clear_value(raw: str) -> None:
    masked = mask_phone(raw)
    assert len(masked) == 11
    assert masked[3:7] == "****"
    if raw.strip("*"):
        assert masked != raw


@given(st.text(max_size=80))
def test_name_mask_keeps_at_most_the_first_character(raw: str) -> None:
    value = raw.strip()
    masked = mask_name(raw)
    assert len(masked) == max(len(value), 1)
    assert set(masked[1:]) <= {"*"}
    if len(value) <= 1:
        assert masked == "*"
    else:
        assert masked[0] == value[0]
