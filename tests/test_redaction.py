import pytest

from tracing.redaction import MASK, mentions_sensitive_field, redact, redact_text


def test_configured_fields_are_masked_at_any_depth_whatever_their_spelling():
    payload = {"order": {"Card-Number": "4111111111111111", "items": [{"api_key": "k-1", "sku": "X"}]}, "Password": "hunter2", "note": "ok"}
    assert redact(payload) == {"order": {"Card-Number": MASK, "items": [{"api_key": MASK, "sku": "X"}]}, "Password": MASK, "note": "ok"}


def test_email_addresses_and_card_numbers_are_masked_inside_any_text():
    text = "customer ada@example.com paid with 4111 1111 1111 1111 for order 123456789012"
    assert redact_text(text) == f"customer {MASK} paid with {MASK} for order 123456789012"


def test_digit_runs_that_fail_the_luhn_check_are_left_alone():
    assert redact_text("tracking 1234567812345678") == "tracking 1234567812345678"


@pytest.mark.parametrize("value", [None, 3, 2.5, True])
def test_non_text_values_pass_through(value):
    assert redact(value) == value


def test_the_field_list_comes_from_settings(settings):
    assert redact({"customer_ref": "C-9", "password": "p"}) == {"customer_ref": "C-9", "password": MASK}
    settings.FLOWSCOPE_REDACT_FIELDS = ["customer_ref"]
    # The same keys asked again: what was remembered of them under the old list does not hold.
    assert redact({"customer_ref": "C-9", "password": "p"}) == {"customer_ref": MASK, "password": "p"}


def test_a_longer_name_that_starts_or_ends_with_a_sensitive_one_is_masked_too():
    payload = {"access_token": "t-1", "customerEmail": "x", "password_hash": "h", "tokens_used": 3, "business_name": "Acme", "session": "s"}
    assert redact(payload) == {"access_token": MASK, "customerEmail": MASK, "password_hash": MASK, "tokens_used": MASK, "business_name": "Acme", "session": "s"}


def test_a_text_mentions_a_sensitive_field_whatever_its_spelling_and_only_then(settings):
    assert mentions_sensitive_field("{'customer_E-mail': 'x'}") and mentions_sensitive_field("(<User Password=…>,)")
    assert not mentions_sensitive_field("{'carrier': 'ups', 'to': 'ann@example.com'}")  # an address, not a field name
    settings.FLOWSCOPE_REDACT_FIELDS = ["carrier"]
    assert mentions_sensitive_field("{'carrier': 'ups'}") and not mentions_sensitive_field("{'password': 'x'}")
