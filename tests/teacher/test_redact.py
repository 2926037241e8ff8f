from shared.redact import redact, redact_counts


def test_emails_phones_and_titled_names_are_replaced():
    text, counts = redact_counts("Call Dr. Smith at +1 555-123-4567 or mail bob.jones@example.com")
    assert text == "Call Dr. [NAME] at [PHONE] or mail [EMAIL]"
    assert counts == {"email": 1, "phone": 1, "name": 1}


def test_introduced_and_common_given_names_are_replaced():
    assert redact("A man named John Carter is at the door.") == "A man named [NAME] is at the door."
    assert redact("My name is Alice. Tom is cooking.") == "My name is [NAME]. [NAME] is cooking."


def test_numbers_that_are_not_phone_numbers_stay():
    for text in [
        "Temperature 21.5 degrees, 2 cars",
        "Room 12, 3 people, year 2024.",
        "At 10:45 pm",
    ]:
        assert redact(text) == text


def test_text_without_pii_is_unchanged():
    text = "Smoke is rising from a frying pan on the stove."
    assert redact_counts(text) == (text, {})
