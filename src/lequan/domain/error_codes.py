"""Every error code lequan can answer, in one table: channels and acquirers
code against these strings, so each has one HTTP status and one meaning.

``ErrorCode`` names the codes; ``ERRORS`` says, for each, its HTTP status,
the exception kind that raises it and what it means. Raising sites pass a
code as a plain string (``Conflict("sold_out", ...)``): a ``StrEnum``
member equals its string, so both spellings meet here.
``lequan.services.views.http_status`` reads the status from this table, the
table in ``docs/api.md`` is printed from it (``scripts/error-table``), and
``tests/unit/test_error_codes.py`` keeps the three and the raising sites
equal.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from lequan.domain.errors import (
    AuthError,
    Conflict,
    IdempotencyError,
    InvalidInput,
    LequanError,
    NotFound,
    Unavailable,
)

__all__ = ["ERRORS", "ErrorCode", "ErrorSpec", "spec_of"]


class ErrorCode(enum.StrEnum):
    """A stable error code, as it appears in an error body's ``code``."""

    # Answered by the HTTP layer itself, before or around the services.
    INVALID_REQUEST = "invalid_request"
    INTERNAL_ERROR = "internal_error"
    NOT_READY = "not_ready"
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    HTTP_ERROR = "http_error"
    BODY_TOO_LARGE = "body_too_large"
    HEADERS_TOO_LARGE = "headers_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    BATCH_TOO_LARGE = "batch_too_large"
    INVALID_ENCODING = "invalid_encoding"
    # Signing and callers (AuthError).
    MISSING_SIGNATURE = "missing_signature"
    INVALID_TIMESTAMP = "invalid_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"
    INVALID_NONCE = "invalid_nonce"
    INVALID_SIGNATURE = "invalid_signature"
    UNKNOWN_APP = "unknown_app"
    NONCE_REUSED = "nonce_reused"
    WRONG_APP_KIND = "wrong_app_kind"
    UNAUTHENTICATED = "unauthenticated"
    UNKNOWN_OPERATOR = "unknown_operator"
    FORBIDDEN = "forbidden"
    # Idempotency keys.
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"
    INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"
    IDEMPOTENCY_IN_FLIGHT = "idempotency_in_flight"
    IDEMPOTENCY_MISMATCH = "idempotency_mismatch"
    # Persons.
    INVALID_ID_NUMBER = "invalid_id_number"
    INVALID_NAME = "invalid_name"
    INVALID_PHONE = "invalid_phone"
    INVALID_REGION = "invalid_region"
    CONSENT_REQUIRED = "consent_required"
    INVALID_CONSENT_VERSION = "invalid_consent_version"
    NOT_REGISTERED = "not_registered"
    ACCOUNT_ALREADY_BOUND = "account_already_bound"
    PERSON_ALREADY_BOUND = "person_already_bound"
    REGISTRATION_CONFLICT = "registration_conflict"
    # Claiming.
    CAMPAIGN_NOT_FOUND = "campaign_not_found"
    ROUND_NOT_FOUND = "round_not_found"
    TEMPLATE_NOT_FOUND = "template_not_found"
    CAMPAIGN_PAUSED = "campaign_paused"
    CAMPAIGN_NOT_LIVE = "campaign_not_live"
    NOT_STARTED = "not_started"
    ROUND_ENDED = "round_ended"
    CHANNEL_NOT_IN_CAMPAIGN = "channel_not_in_campaign"
    BUDGET_EXHAUSTED = "budget_exhausted"
    SOLD_OUT = "sold_out"
    ALREADY_CLAIMED = "already_claimed"
    CLAIM_LIMIT_REACHED = "claim_limit_reached"
    INELIGIBLE = "ineligible"
    RISK_REFUSED = "risk_refused"
    # Vouchers (the state machine's refusals).
    VOUCHER_NOT_FOUND = "voucher_not_found"
    VOUCHER_NOT_YET_VALID = "voucher_not_yet_valid"
    VOUCHER_EXPIRED = "voucher_expired"
    VOUCHER_LOCKED = "voucher_locked"
    VOUCHER_NOT_LOCKED = "voucher_not_locked"
    ALREADY_REDEEMED = "already_redeemed"
    VOUCHER_NOT_REDEEMED = "voucher_not_redeemed"
    VOUCHER_REVOKED = "voucher_revoked"
    VOUCHER_VOID = "voucher_void"
    INVALID_TRANSITION = "invalid_transition"
    VOUCHER_BUSY = "voucher_busy"
    # Redemption.
    INVALID_AMOUNT = "invalid_amount"
    MERCHANT_NOT_FOUND = "merchant_not_found"
    CHANNEL_MISMATCH = "channel_mismatch"
    MERCHANT_NOT_IN_SCOPE = "merchant_not_in_scope"
    MERCHANT_SUSPENDED = "merchant_suspended"
    REDEMPTIONS_PAUSED = "redemptions_paused"
    MODE_NOT_IN_SCOPE = "mode_not_in_scope"
    ORDER_TYPE_EXCLUDED = "order_type_excluded"
    BELOW_THRESHOLD = "below_threshold"
    REDEMPTION_NOT_FOUND = "redemption_not_found"
    REDEMPTION_STATE = "redemption_state"
    LOCK_EXPIRED = "lock_expired"
    REVERSAL_WINDOW_PASSED = "reversal_window_passed"
    PARTIAL_REFUND_UNSUPPORTED = "partial_refund_unsupported"
    REDEMPTION_CLAWED_BACK = "redemption_clawed_back"
    # Trade-in redemptions: the product (domain/trade_in.py).
    PRODUCT_REQUIRED = "product_required"
    PRODUCT_CATEGORY_MISMATCH = "product_category_mismatch"
    ENERGY_GRADE_REQUIRED = "energy_grade_required"
    ENERGY_GRADE_NOT_SUBSIDISED = "energy_grade_not_subsidised"
    PRICE_ABOVE_CATEGORY_LIMIT = "price_above_category_limit"
    SERIAL_ALREADY_SUBSIDISED = "serial_already_subsidised"
    INVOICE_ALREADY_SUBSIDISED = "invoice_already_subsidised"
    SERIAL_REUSED_IN_REQUEST = "serial_reused_in_request"
    # Operators' console and CLI.
    INVALID_OPERATOR_ID = "invalid_operator_id"
    INVALID_ROLE = "invalid_role"
    OPERATOR_EXISTS = "operator_exists"
    INVALID_APP_ID = "invalid_app_id"
    INVALID_APP_KIND = "invalid_app_kind"
    APP_EXISTS = "app_exists"
    INVALID_CAMPAIGN_CONFIG = "invalid_campaign_config"
    CAMPAIGN_EXISTS = "campaign_exists"
    CAMPAIGN_STATE = "campaign_state"
    MAKER_CANNOT_APPROVE = "maker_cannot_approve"
    INVALID_MERCHANT = "invalid_merchant"
    INVALID_MERCHANT_FILE = "invalid_merchant_file"
    INVALID_REASON = "invalid_reason"
    CSRF_HEADER_REQUIRED = "csrf_header_required"
    # Risk control (issue 16): the rules file, the review queue, the blacklists.
    INVALID_RISK_RULES = "invalid_risk_rules"
    RISK_RULES_VERSION = "risk_rules_version"
    RISK_RULES_NOT_FOUND = "risk_rules_not_found"
    RISK_RULES_STATE = "risk_rules_state"
    REVIEW_NOT_FOUND = "review_not_found"
    REVIEW_STATE = "review_state"
    INVALID_DEVICE_ID = "invalid_device_id"
    INVALID_SKU_PRICES = "invalid_sku_prices"
    # Retry later (Unavailable, with Retry-After).
    THROTTLED = "throttled"
    OVERLOADED = "overloaded"
    TOO_MANY_STREAMS = "too_many_streams"
    STORE_UNAVAILABLE = "store_unavailable"
    COMMIT_TIMEOUT = "commit_timeout"
    GATE_UNAVAILABLE = "gate_unavailable"
    GATE_REBUILDING = "gate_rebuilding"
    NONCE_STORE_UNAVAILABLE = "nonce_store_unavailable"
    CLAIM_PENDING = "claim_pending"
    KEY_MISMATCH = "key_mismatch"
    # Central (the national platform, issue 14): its signed API and operator tools.
    CENTRAL_BATCH_TOO_LARGE = "central_batch_too_large"
    CENTRAL_INVALID_BATCH = "central_invalid_batch"
    CENTRAL_INVALID_ID = "central_invalid_id"
    CENTRAL_DUPLICATE_ITEM = "central_duplicate_item"
    CENTRAL_INVALID_PSEUDONYM = "central_invalid_pseudonym"
    CENTRAL_INVALID_BLINDED_INPUT = "central_invalid_blinded_input"
    CENTRAL_INVALID_CATEGORY = "central_invalid_category"
    CENTRAL_INVALID_LOCK = "central_invalid_lock"
    CENTRAL_LOCK_ID_MISMATCH = "central_lock_id_mismatch"
    CENTRAL_CATEGORY_MISMATCH = "central_category_mismatch"
    CENTRAL_INVALID_SERIAL = "central_invalid_serial"
    CENTRAL_INVALID_PRODUCT = "central_invalid_product"
    CENTRAL_INVALID_AMOUNT = "central_invalid_amount"
    CENTRAL_INVALID_EVENT = "central_invalid_event"
    CENTRAL_INVALID_REASON = "central_invalid_reason"
    CENTRAL_INVALID_DAY = "central_invalid_day"
    CENTRAL_INVALID_PROVINCE_CODE = "central_invalid_province_code"
    CENTRAL_PROVINCE_EXISTS = "central_province_exists"
    CENTRAL_NO_LIVE_LOCK = "central_no_live_lock"
    # Trade-in applications and the province's link to central (issue 14).
    QUALIFICATION_USED_ELSEWHERE = "qualification_used_elsewhere"
    QUALIFICATION_LIMIT_REACHED = "qualification_limit_reached"
    QUALIFICATION_REVOKED = "qualification_revoked"
    QUALIFICATION_LOCK_SETTLED = "qualification_lock_settled"
    QUALIFICATION_NOT_HELD = "qualification_not_held"
    QUALIFICATION_HOLD_EXPIRED = "qualification_hold_expired"
    NOT_A_TRADE_IN_TEMPLATE = "not_a_trade_in_template"
    TRADE_IN_IS_APPLIED_FOR = "trade_in_is_applied_for"
    CENTRAL_UNAVAILABLE = "central_unavailable"
    CENTRAL_NOT_CONFIGURED = "central_not_configured"
    RECONCILIATION_TOO_LARGE = "reconciliation_too_large"
    # The fair start (issue 16): docs/risk.md.
    FAIR_START_UNAVAILABLE = "fair_start_unavailable"
    DRAW_PENDING = "draw_pending"
    NO_START_WINDOW = "no_start_window"
    # Shown by the CLI alone: the platform refuses to start.
    SETUP_ERROR = "setup_error"


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """What a code means to the caller and how it travels."""

    # The HTTP status the code is answered with; None when it has none of its own:
    # ``http_error`` carries the status the web framework raised, and ``setup_error``
    # is only ever shown by the CLI.
    status: int | None
    # The exception that raises it (``LequanError`` itself for a subclass outside the
    # domain); None when lequan.http writes the body itself.
    kind: type[LequanError] | None
    meaning: str
    # The name lequan.http gives the web framework's own HTTPException of this status.
    framework: bool = False


_C = ErrorCode

ERRORS: Final[Mapping[ErrorCode, ErrorSpec]] = {
    _C.INVALID_REQUEST: ErrorSpec(
        422,
        InvalidInput,
        "the body, path or query breaks its schema (`details.errors` lists each field and rule), "
        "the body is not JSON (its field is `body`), or a value in it cannot be stored",
    ),
    _C.INTERNAL_ERROR: ErrorSpec(
        500, None, "an unexpected error; it has been logged with the `request_id`"
    ),
    _C.NOT_READY: ErrorSpec(
        503, None, "`/readyz`: the store or the claim gate does not answer (`details` says which)"
    ),
    _C.BAD_REQUEST: ErrorSpec(
        400,
        None,
        "the web framework refused the request as malformed; a body that is not JSON is "
        "`invalid_request` instead, on every route",
        framework=True,
    ),
    _C.NOT_FOUND: ErrorSpec(404, None, "no such path", framework=True),
    _C.METHOD_NOT_ALLOWED: ErrorSpec(
        405,
        None,
        "the path exists, the method does not; the `Allow` header names those it takes",
        framework=True,
    ),
    _C.UNSUPPORTED_MEDIA_TYPE: ErrorSpec(
        415, None, "the web framework refused the body's media type", framework=True
    ),
    _C.HTTP_ERROR: ErrorSpec(
        None,
        None,
        "the web framework refused the request with another status, which is the answer's",
        framework=True,
    ),
    _C.BODY_TOO_LARGE: ErrorSpec(
        413,
        InvalidInput,
        "the body is over `request_body_bytes_max`, or an operator's upload over its own "
        "(`campaign_file_bytes_max`, `merchant_file_bytes_max`)",
        framework=True,
    ),
    _C.HEADERS_TOO_LARGE: ErrorSpec(
        431, None, "the request line and headers are over `http_header_bytes_max`"
    ),
    _C.REQUEST_TIMEOUT: ErrorSpec(
        408,
        None,
        "the headers did not arrive within `http_header_timeout_s`, "
        "or the body within `http_body_timeout_s`",
    ),
    _C.BATCH_TOO_LARGE: ErrorSpec(
        422, InvalidInput, "a claim batch holds more than `claim_batch_items_max` items"
    ),
    _C.INVALID_ENCODING: ErrorSpec(422, InvalidInput, "an uploaded file is not UTF-8"),
    _C.MISSING_SIGNATURE: ErrorSpec(
        401, AuthError, "one or more of the four signing headers is absent or empty"
    ),
    _C.INVALID_TIMESTAMP: ErrorSpec(
        401, AuthError, "`X-Lequan-Timestamp` is not a plain decimal integer of unix seconds"
    ),
    _C.STALE_TIMESTAMP: ErrorSpec(
        401,
        AuthError,
        "the timestamp is more than 300 s from the server's clock, or older than the "
        "nonce store's start (a restart since it was signed)",
    ),
    _C.INVALID_NONCE: ErrorSpec(
        401, AuthError, "`X-Lequan-Nonce` is not 8–64 characters of `[A-Za-z0-9_-]`"
    ),
    _C.INVALID_SIGNATURE: ErrorSpec(
        401, AuthError, "the signature does not match the request, or is malformed or repeated"
    ),
    _C.UNKNOWN_APP: ErrorSpec(401, AuthError, "`X-Lequan-App` names no active app"),
    _C.NONCE_REUSED: ErrorSpec(
        401, AuthError, "this app already sent this nonce within the window"
    ),
    _C.WRONG_APP_KIND: ErrorSpec(
        403, AuthError, "a channel calling the acquirer API, or the reverse"
    ),
    _C.UNAUTHENTICATED: ErrorSpec(
        401, AuthError, "the operator's bearer token is missing or unknown"
    ),
    _C.UNKNOWN_OPERATOR: ErrorSpec(401, AuthError, "no active operator by that name"),
    _C.FORBIDDEN: ErrorSpec(
        403,
        AuthError,
        "the operator's role may not do this, or the merchant is not served by this acquirer",
    ),
    _C.IDEMPOTENCY_KEY_REQUIRED: ErrorSpec(
        422, InvalidInput, "a mutating call (or a batch item) without an `Idempotency-Key`"
    ),
    _C.INVALID_IDEMPOTENCY_KEY: ErrorSpec(
        422,
        InvalidInput,
        "the key is longer than `idempotency_key_chars_max` (128) or has characters other than "
        "letters, digits and `- _ . :`",
    ),
    _C.IDEMPOTENCY_IN_FLIGHT: ErrorSpec(
        409, IdempotencyError, "the first request with this key is still running; retry soon"
    ),
    _C.IDEMPOTENCY_MISMATCH: ErrorSpec(
        422, IdempotencyError, "this key was used with a different request"
    ),
    _C.INVALID_ID_NUMBER: ErrorSpec(
        422, InvalidInput, "not a valid resident ID number (`details.rule` says which rule)"
    ),
    _C.INVALID_NAME: ErrorSpec(
        422, InvalidInput, "a name is empty, too long or holds control characters"
    ),
    _C.INVALID_PHONE: ErrorSpec(422, InvalidInput, "not a mainland mobile number"),
    _C.INVALID_REGION: ErrorSpec(422, InvalidInput, "a region is not a 6-digit GB/T 2260 code"),
    _C.CONSENT_REQUIRED: ErrorSpec(
        422, InvalidInput, "the person has not consented to the use of their data"
    ),
    _C.INVALID_CONSENT_VERSION: ErrorSpec(
        422, InvalidInput, "the consent text version is not one lequan knows"
    ),
    _C.NOT_REGISTERED: ErrorSpec(
        404, NotFound, "this channel account is not registered: register the person first"
    ),
    _C.ACCOUNT_ALREADY_BOUND: ErrorSpec(
        409, Conflict, "this channel account is bound to another person"
    ),
    _C.PERSON_ALREADY_BOUND: ErrorSpec(
        409, Conflict, "the person is already registered in this channel with another account"
    ),
    _C.REGISTRATION_CONFLICT: ErrorSpec(
        409, Conflict, "the same person was registered concurrently; retry"
    ),
    _C.CAMPAIGN_NOT_FOUND: ErrorSpec(404, NotFound, "no campaign with this id"),
    _C.ROUND_NOT_FOUND: ErrorSpec(404, NotFound, "the campaign has no round with this id"),
    _C.TEMPLATE_NOT_FOUND: ErrorSpec(404, NotFound, "the campaign has no template with this id"),
    _C.CAMPAIGN_PAUSED: ErrorSpec(409, Conflict, "operators paused the campaign"),
    _C.CAMPAIGN_NOT_LIVE: ErrorSpec(409, Conflict, "the campaign is not running"),
    _C.NOT_STARTED: ErrorSpec(409, Conflict, "the round opens later (`details.release_at`)"),
    _C.ROUND_ENDED: ErrorSpec(409, Conflict, "the round is over"),
    _C.CHANNEL_NOT_IN_CAMPAIGN: ErrorSpec(
        409, Conflict, "the campaign is not issued through this channel"
    ),
    _C.BUDGET_EXHAUSTED: ErrorSpec(
        409,
        Conflict,
        "the campaign's money is used up, whatever stock remains (or cannot take a voucher back)",
    ),
    _C.SOLD_OUT: ErrorSpec(
        409, Conflict, "the stock of this voucher in this round and channel is gone"
    ),
    _C.ALREADY_CLAIMED: ErrorSpec(
        409, Conflict, "the person already claimed in this round through this channel"
    ),
    _C.CLAIM_LIMIT_REACHED: ErrorSpec(
        409, Conflict, "the person has claimed as many vouchers as the campaign allows"
    ),
    _C.INELIGIBLE: ErrorSpec(
        409, Conflict, "the person may not claim: `details.reasons` says why (region, blacklist…)"
    ),
    _C.RISK_REFUSED: ErrorSpec(
        403,
        AuthError,
        "a risk rule refused the claim: `details.reasons` lists the codes of the rules that "
        "fired (docs/risk.md); nothing was reserved",
    ),
    _C.VOUCHER_NOT_FOUND: ErrorSpec(404, NotFound, "no voucher with this id for this person"),
    _C.VOUCHER_NOT_YET_VALID: ErrorSpec(409, Conflict, "the voucher's validity starts later"),
    _C.VOUCHER_EXPIRED: ErrorSpec(409, Conflict, "the voucher has expired"),
    _C.VOUCHER_LOCKED: ErrorSpec(409, Conflict, "a pending redemption holds the voucher"),
    _C.VOUCHER_NOT_LOCKED: ErrorSpec(
        409, Conflict, "confirm or release of a voucher no redemption holds"
    ),
    _C.ALREADY_REDEEMED: ErrorSpec(409, Conflict, "the voucher has already been redeemed"),
    _C.VOUCHER_NOT_REDEEMED: ErrorSpec(
        409, Conflict, "reverse or refund of a voucher that was not redeemed"
    ),
    _C.VOUCHER_REVOKED: ErrorSpec(409, Conflict, "operators revoked the voucher"),
    _C.VOUCHER_VOID: ErrorSpec(409, Conflict, "the voucher is void (refunded and not restored)"),
    _C.INVALID_TRANSITION: ErrorSpec(
        409, Conflict, "the voucher's state does not allow this step (a refund is under way)"
    ),
    _C.VOUCHER_BUSY: ErrorSpec(409, Conflict, "the voucher changed meanwhile; retry"),
    _C.INVALID_AMOUNT: ErrorSpec(422, InvalidInput, "`order_amount_fen` is out of range"),
    _C.MERCHANT_NOT_FOUND: ErrorSpec(404, NotFound, "no merchant with this id"),
    _C.CHANNEL_MISMATCH: ErrorSpec(
        409, Conflict, "a voucher is used with the channel it was claimed in"
    ),
    _C.MERCHANT_NOT_IN_SCOPE: ErrorSpec(
        409, Conflict, "the merchant is not enrolled, or its category is outside the campaign"
    ),
    _C.MERCHANT_SUSPENDED: ErrorSpec(
        409,
        Conflict,
        "operators suspended the merchant: it takes no voucher and captures no authorization "
        "until reinstated",
    ),
    _C.REDEMPTIONS_PAUSED: ErrorSpec(
        409,
        Conflict,
        "operators paused the redemptions of the voucher's campaign: nothing was spent; "
        "an authorization taken before may still be confirmed",
    ),
    _C.MODE_NOT_IN_SCOPE: ErrorSpec(
        409, Conflict, "the voucher is not for this mode (online or in store) here"
    ),
    _C.ORDER_TYPE_EXCLUDED: ErrorSpec(
        409, Conflict, "the campaign excludes this order type (gift cards, prepaid cards…)"
    ),
    _C.BELOW_THRESHOLD: ErrorSpec(409, Conflict, "the order is below the voucher's minimum amount"),
    _C.REDEMPTION_NOT_FOUND: ErrorSpec(
        404, NotFound, "no redemption with this id for this acquirer"
    ),
    _C.REDEMPTION_STATE: ErrorSpec(
        409,
        Conflict,
        "the redemption's status does not allow this step, or it changed meanwhile; look again",
    ),
    _C.LOCK_EXPIRED: ErrorSpec(409, Conflict, "the lock timed out before confirm; redeem again"),
    _C.REVERSAL_WINDOW_PASSED: ErrorSpec(
        409, Conflict, "too late to reverse (`reversal_window_s`); refund instead"
    ),
    _C.PARTIAL_REFUND_UNSUPPORTED: ErrorSpec(
        422, InvalidInput, "a refund of anything but the whole order amount"
    ),
    _C.REDEMPTION_CLAWED_BACK: ErrorSpec(
        409,
        Conflict,
        "a risk analyst clawed back the merchant's payable for this redemption: it is not "
        "refunded or reversed through the platform (docs/risk.md)",
    ),
    _C.PRODUCT_REQUIRED: ErrorSpec(
        422, InvalidInput, "a trade-in voucher is redeemed (or quoted) with its `product`"
    ),
    _C.PRODUCT_CATEGORY_MISMATCH: ErrorSpec(
        409,
        Conflict,
        "the product's category is not the trade-in voucher's (`details.voucher_category`)",
    ),
    _C.ENERGY_GRADE_REQUIRED: ErrorSpec(
        422, InvalidInput, "an appliance is subsidised by its `product.energy_grade`: give it"
    ),
    _C.ENERGY_GRADE_NOT_SUBSIDISED: ErrorSpec(
        409,
        Conflict,
        "the campaign subsidises no product of this energy grade (`details.subsidised`)",
    ),
    _C.PRICE_ABOVE_CATEGORY_LIMIT: ErrorSpec(
        409,
        Conflict,
        "the product's price is above its category's limit (`details.price_max_fen`: "
        "digital products at most 6,000 yuan)",
    ),
    _C.SERIAL_ALREADY_SUBSIDISED: ErrorSpec(
        409,
        Conflict,
        "this serial number or IMEI is subsidised already in this province (`details.field`); "
        "a refund or reversal frees it",
    ),
    _C.INVOICE_ALREADY_SUBSIDISED: ErrorSpec(
        409, Conflict, "this invoice number is subsidised already in this province"
    ),
    _C.SERIAL_REUSED_IN_REQUEST: ErrorSpec(
        422,
        InvalidInput,
        "one request gives one identifier twice (a product's `serial_number` equal to its `imei`)",
    ),
    _C.INVALID_OPERATOR_ID: ErrorSpec(
        422, InvalidInput, "an operator id is 2–32 of `a-z 0-9 . _ -`"
    ),
    _C.INVALID_ROLE: ErrorSpec(422, InvalidInput, "no such operator role"),
    _C.OPERATOR_EXISTS: ErrorSpec(409, Conflict, "an operator with this id already exists"),
    _C.INVALID_APP_ID: ErrorSpec(422, InvalidInput, "an app id is 2–32 of `a-z 0-9 _ -`"),
    _C.INVALID_APP_KIND: ErrorSpec(422, InvalidInput, "an app is a channel or an acquirer"),
    _C.APP_EXISTS: ErrorSpec(409, Conflict, "an app with this id already exists"),
    _C.INVALID_CAMPAIGN_CONFIG: ErrorSpec(
        422,
        InvalidInput,
        "the campaign's configuration breaks a rule (`details.errors`), or the file is not "
        "YAML, nests too deep or expands too far (`campaign_file_depth_max`, `_nodes_max`)",
    ),
    _C.CAMPAIGN_EXISTS: ErrorSpec(409, Conflict, "a campaign with this id already exists"),
    _C.CAMPAIGN_STATE: ErrorSpec(
        409,
        Conflict,
        "the campaign's status does not allow this step, or it changed meanwhile; look again",
    ),
    _C.MAKER_CANNOT_APPROVE: ErrorSpec(
        403,
        AuthError,
        "the operator who drafted a campaign or a version of the risk rules cannot approve "
        "it, whatever their role",
    ),
    _C.INVALID_MERCHANT: ErrorSpec(422, InvalidInput, "a merchant's field breaks its rule"),
    _C.INVALID_MERCHANT_FILE: ErrorSpec(
        422,
        InvalidInput,
        "the merchant file's header, a line, its size or its rows are wrong, or a row names "
        "an acquirer or a campaign that does not exist (`details.line`)",
    ),
    _C.INVALID_REASON: ErrorSpec(422, InvalidInput, "a reason is 1–200 characters"),
    _C.CSRF_HEADER_REQUIRED: ErrorSpec(
        403,
        AuthError,
        "a change made with the screen's session cookie must carry the header "
        "`X-Lequan-CSRF: 1` (a page of another site cannot send it)",
    ),
    _C.INVALID_RISK_RULES: ErrorSpec(
        422,
        InvalidInput,
        "the risk rules file breaks a rule (`details.errors`, each with its field path), or "
        "is not YAML, nests too deep or expands too far; nothing is stored, the rules in "
        "force stay",
    ),
    _C.RISK_RULES_VERSION: ErrorSpec(
        409, Conflict, "a rules file's `version` must be above every version drafted already"
    ),
    _C.RISK_RULES_NOT_FOUND: ErrorSpec(
        404, NotFound, "no version of the risk rules by this number"
    ),
    _C.RISK_RULES_STATE: ErrorSpec(
        409, Conflict, "only a draft above the active version can be approved"
    ),
    _C.REVIEW_NOT_FOUND: ErrorSpec(404, NotFound, "no review item with this id"),
    _C.REVIEW_STATE: ErrorSpec(
        409, Conflict, "the review item is decided already (`details.status`); look again"
    ),
    _C.INVALID_DEVICE_ID: ErrorSpec(
        422, InvalidInput, "a device id is 8-64 of `A-Z a-z 0-9 _ . : -`"
    ),
    _C.INVALID_SKU_PRICES: ErrorSpec(
        422,
        InvalidInput,
        "the SKU price file breaks a rule (`details.line`): a header `sku,baseline_price_fen`, "
        "a SKU of 1-64 printable characters once, a price of 1 fen or more; nothing is stored",
    ),
    _C.THROTTLED: ErrorSpec(
        429, Unavailable, "this app sends faster than its allowance; slow down"
    ),
    _C.OVERLOADED: ErrorSpec(
        429, Unavailable, "the platform sheds load; retry after `Retry-After` with the same key"
    ),
    _C.TOO_MANY_STREAMS: ErrorSpec(
        429,
        Unavailable,
        "this process serves as many screen streams as it may, in all or to this operator",
    ),
    _C.STORE_UNAVAILABLE: ErrorSpec(
        503,
        Unavailable,
        "the store (the database) does not answer, or the process is shutting down",
    ),
    _C.COMMIT_TIMEOUT: ErrorSpec(
        503, Unavailable, "the claim is not committed (or not known to be) yet; retry, same key"
    ),
    _C.GATE_UNAVAILABLE: ErrorSpec(
        503, Unavailable, "the claim gate (Redis) cannot be reached; nothing was reserved"
    ),
    _C.GATE_REBUILDING: ErrorSpec(
        503, Unavailable, "the claim gate lost its state and is being rebuilt from the store"
    ),
    _C.NONCE_STORE_UNAVAILABLE: ErrorSpec(
        503,
        Unavailable,
        "the nonce store (Redis) cannot be reached, so no signed call is checked; nothing was done",
    ),
    _C.CLAIM_PENDING: ErrorSpec(
        503,
        Unavailable,
        "the gate counts a claim of this person that the store does not hold yet: an "
        "earlier claim (another key, or a reply lost on the way) may still be committed; "
        "retry shortly",
    ),
    _C.KEY_MISMATCH: ErrorSpec(
        503,
        Unavailable,
        "a stored value does not open with the server's keys (another key file than the "
        "data's, or altered data); nothing was done: operators must restart it with the "
        "right key file",
    ),
    # Central (issue 14): docs/central.md.
    _C.CENTRAL_BATCH_TOO_LARGE: ErrorSpec(
        422, InvalidInput, "a batch to central holds more than 1,000 items (`details.items_max`)"
    ),
    _C.CENTRAL_INVALID_BATCH: ErrorSpec(422, InvalidInput, "a batch to central holds no item"),
    _C.CENTRAL_INVALID_ID: ErrorSpec(
        422,
        InvalidInput,
        "a lock, voucher, redemption or event id is not 1-64 of `A-Z a-z 0-9 _ . : -` "
        "(`details.index` names the item)",
    ),
    _C.CENTRAL_DUPLICATE_ITEM: ErrorSpec(
        422, InvalidInput, "the same lock or event id twice in one batch"
    ),
    _C.CENTRAL_INVALID_PSEUDONYM: ErrorSpec(
        422, InvalidInput, "a national pseudonym is not 64 lowercase hex characters"
    ),
    _C.CENTRAL_INVALID_BLINDED_INPUT: ErrorSpec(
        422, InvalidInput, "a blinded input is not the base64 of a ristretto255 element"
    ),
    _C.CENTRAL_INVALID_CATEGORY: ErrorSpec(
        422, InvalidInput, "a category is not 1-40 of `a-z 0-9 _` starting with a letter"
    ),
    _C.CENTRAL_INVALID_LOCK: ErrorSpec(
        422, InvalidInput, "a lock's `items_max` or `hold_s` is out of range"
    ),
    _C.CENTRAL_LOCK_ID_MISMATCH: ErrorSpec(
        422, InvalidInput, "a lock id already names a lock of another person, category or province"
    ),
    _C.CENTRAL_CATEGORY_MISMATCH: ErrorSpec(
        422, InvalidInput, "a consumption's category is not its lock's"
    ),
    _C.CENTRAL_INVALID_SERIAL: ErrorSpec(
        422,
        InvalidInput,
        "a product has neither serial number nor IMEI, or one breaks its form (a serial "
        "number 1-64 of `A-Z 0-9 . / _`, an IMEI 14-16 digits)",
    ),
    _C.CENTRAL_INVALID_PRODUCT: ErrorSpec(
        422, InvalidInput, "a product's invoice number or fields are missing or malformed"
    ),
    _C.CENTRAL_INVALID_AMOUNT: ErrorSpec(
        422, InvalidInput, "a price is not 1 fen to 1,000,000 yuan, or the subsidy exceeds it"
    ),
    _C.CENTRAL_INVALID_EVENT: ErrorSpec(
        422, InvalidInput, "an event's topic, time, voucher, seq or lock id breaks its form"
    ),
    _C.CENTRAL_INVALID_REASON: ErrorSpec(
        422, InvalidInput, "a release, revocation or move reason is not 1-200 printable characters"
    ),
    _C.CENTRAL_INVALID_DAY: ErrorSpec(422, InvalidInput, "a day is not a `YYYY-MM-DD` date"),
    _C.CENTRAL_INVALID_PROVINCE_CODE: ErrorSpec(
        422, InvalidInput, "a province code is not 2-32 of `a-z 0-9 _ -`"
    ),
    _C.CENTRAL_PROVINCE_EXISTS: ErrorSpec(
        409, Conflict, "central already has a province with this code"
    ),
    _C.CENTRAL_NO_LIVE_LOCK: ErrorSpec(
        404, NotFound, "the province holds no unused slot of this qualification to move"
    ),
    # Trade-in applications (issue 14): docs/central.md.
    _C.QUALIFICATION_USED_ELSEWHERE: ErrorSpec(
        409,
        Conflict,
        "the person's qualification for the category is held or used in another province",
    ),
    _C.QUALIFICATION_LIMIT_REACHED: ErrorSpec(
        409,
        Conflict,
        "the person has used every subsidy of the category a person may have nationwide "
        "(one; air conditioners three)",
    ),
    _C.QUALIFICATION_REVOKED: ErrorSpec(
        409, Conflict, "an operator revoked the person's qualification for the category"
    ),
    _C.QUALIFICATION_LOCK_SETTLED: ErrorSpec(
        409, Conflict, "this application's lock was settled already; use a new Idempotency-Key"
    ),
    _C.QUALIFICATION_NOT_HELD: ErrorSpec(
        409,
        Conflict,
        "the qualification a trade-in voucher stands for is no longer held at central "
        "(revoked or moved): the voucher cannot be spent",
    ),
    _C.QUALIFICATION_HOLD_EXPIRED: ErrorSpec(
        503,
        Unavailable,
        "the qualification's hold at central ran out before the voucher was issued; nothing "
        "was issued: retry with the same Idempotency-Key",
    ),
    _C.NOT_A_TRADE_IN_TEMPLATE: ErrorSpec(
        409, Conflict, "the template is a consumption voucher: claim it at /v1/claims"
    ),
    _C.TRADE_IN_IS_APPLIED_FOR: ErrorSpec(
        409,
        Conflict,
        "a trade-in voucher is applied for at /v1/trade-in/applications (central locks the "
        "qualification first), never claimed",
    ),
    _C.CENTRAL_UNAVAILABLE: ErrorSpec(
        503,
        Unavailable,
        "the central platform did not answer; nothing was issued: retry with the same "
        "Idempotency-Key",
    ),
    _C.CENTRAL_NOT_CONFIGURED: ErrorSpec(
        409,
        Conflict,
        "this province is not connected to a central platform (`LEQUAN_CENTRAL_URL`): no "
        "trade-in voucher, no reconciliation",
    ),
    _C.RECONCILIATION_TOO_LARGE: ErrorSpec(
        503, Unavailable, "more vouchers in one day than one reconciliation compares"
    ),
    _C.FAIR_START_UNAVAILABLE: ErrorSpec(
        409,
        Conflict,
        "a start window needs each pool's stock in one gate bucket, and this deployment "
        "splits it (`LEQUAN_GATE_BUCKETS` > 1): set the campaign's `start_window_s` to 0, "
        "or serve it with one bucket",
    ),
    _C.DRAW_PENDING: ErrorSpec(
        503,
        Unavailable,
        "the claim is entered in the round's fair start, whose draw has not reached it in "
        "time (or was interrupted); retry with the same Idempotency-Key",
    ),
    _C.NO_START_WINDOW: ErrorSpec(
        404,
        NotFound,
        "the round has no start window committed: none is configured, or the campaign is "
        "not approved yet",
    ),
    _C.SETUP_ERROR: ErrorSpec(
        None,
        LequanError,
        "the CLI: the platform cannot start as configured (key file, schema, workers); "
        "never an HTTP answer",
    ),
}

_BY_VALUE: Final[Mapping[str, ErrorSpec]] = {str(code): spec for code, spec in ERRORS.items()}


def spec_of(code: str) -> ErrorSpec | None:
    """The registry's entry for a code as an error carries it (a plain string), if any."""
    return _BY_VALUE.get(code)
