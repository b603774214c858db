"""The device backoff file: round trip, and any content loads without an exception."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.backoffstore import BackoffStore


def test_round_trip_and_recovery_clears(tmp_path: Path) -> None:
    path = tmp_path / "device-backoff.json"
    store = BackoffStore(path)
    assert store.resume("a") is None
    store.update("a", 3, 1_700_000_000.25)
    store.update("b", 1, 1_700_000_001.0)
    again = BackoffStore(path)
    assert again.resume("a") == (3, 1_700_000_000.25)
    again.update("a", 0, 0.0)  # healthy again: forgotten, on disk too
    assert BackoffStore(path).resume("a") is None
    assert BackoffStore(path).resume("b") == (1, 1_700_000_001.0)
    assert not (tmp_path / "device-backoff.json.tmp").exists()


def test_unwritable_directory_is_counted_not_raised(tmp_path: Path) -> None:
    store = BackoffStore(tmp_path / "missing-dir" / "device-backoff.json")
    store.update("a", 2, 5.0)
    assert store.write_errors == 1
    assert store.resume("a") == (2, 5.0)  # still used in memory


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=80, deadline=None)
@given(doc=json_values, raw=st.binary(max_size=40), use_raw=st.booleans())
def test_any_file_content_loads(tmp_path_factory, doc: object, raw: bytes, use_raw: bool) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("b") / "device-backoff.json"
    if use_raw:
        path.write_bytes(raw)
    else:
        path.write_text(json.dumps(doc))
    state = BackoffStore(path).state
    for failures, when in state.values():
        assert isinstance(failures, int) and failures > 0 and math.isfinite(when)
