"""Reading InfluxDB's 400 messages (verbatim from influxd 1.6.7) back to batch lines."""

from __future__ import annotations

from rules.sink.rejects import analyse, error_message

LINES = [
    "telemetry,site=a,device=d pm10=1.5 1000",
    'telemetry,site=a,device=d pm10="x" 2000',
    "telemetry,site=a,device=d pm10=2.5 3000",
    "telemetry,site=a,device=d pm10= 4000",
    'actuator,site=a pm10="x" 5000',
]

CONFLICT = (
    b'{"error":"partial write: field type conflict: input field \\"pm10\\" on measurement '
    b'\\"telemetry\\" is type string, already exists as type float dropped=1"}\n'
)


def test_error_message_unwraps_v1_and_v2_bodies():
    assert error_message(CONFLICT).startswith("partial write: field type conflict")
    assert error_message(b'{"code":"invalid","message":"bad"}') == "bad"
    assert error_message(b"plain text\n") == "plain text"


def test_type_conflict_names_the_conflicting_lines_only():
    v = analyse(LINES, error_message(CONFLICT))
    assert v.understood and v.rejected == [1] and v.resend == []


def test_type_conflict_count_mismatch_asks_for_bisection():
    msg = error_message(CONFLICT).replace("dropped=1", "dropped=2")
    assert not analyse(LINES, msg).understood


def test_partial_parse_error_quotes_the_line():
    msg = (
        "partial write: unable to parse 'telemetry,site=a,device=d pm10= 4000': "
        "missing field value dropped=0"
    )
    v = analyse(LINES, msg)
    assert v.understood and v.rejected == [3] and v.resend == []


def test_whole_batch_parse_error_resends_the_rest():
    msg = "unable to parse 'telemetry,site=a,device=d pm10= 4000': missing field value"
    v = analyse(LINES, msg)
    assert v.understood and v.rejected == [3] and v.resend == [0, 1, 2, 4]


def test_unknown_messages_are_not_guessed():
    assert not analyse(LINES, "partial write: points beyond retention policy dropped=2").understood
    assert not analyse(LINES, "unable to parse 'not in batch': x").understood
