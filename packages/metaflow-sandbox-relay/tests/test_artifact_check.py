import collections
import datetime
import decimal
import gzip
import io
import json
import os
import pickle

import pytest

from metaflow_sandbox_relay import artifact_problems, pickle_problem, trust_rule


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/should-not-exist",))


class Custom:
    pass


PLAIN = {
    "nested": {"a": [1, 2.5, (3, None)], "b": b"bytes", "s": {1, 2}, "f": frozenset({3})},
    "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "ordered": collections.OrderedDict(a=1),
    "default": collections.defaultdict(list, a=[1]),
    "deque": collections.deque([1, 2]),
    "money": decimal.Decimal("1.10"),
}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_data_is_accepted(protocol):
    assert pickle_problem(pickle.dumps(PLAIN, protocol=protocol), trust_rule(None)) is None


def test_code_execution_is_refused_without_running_it(tmp_path):
    assert pickle_problem(pickle.dumps(Evil()), trust_rule(None)) == "it references posix.system"
    assert not os.path.exists("/tmp/should-not-exist")


def test_unknown_classes_need_trust():
    data = pickle.dumps(Custom())
    assert "test_artifact_check.Custom" in pickle_problem(data, trust_rule(None))
    assert pickle_problem(data, trust_rule([Custom.__module__])) is None
    assert pickle_problem(pickle.dumps(Evil()), trust_rule("*")) is None  # explicit opt-out


def test_garbage_is_refused():
    assert pickle_problem(b"\x80\x04garbage", trust_rule(None)) is not None
    assert pickle_problem(b"not a pickle at all", trust_rule(None)) is not None


def test_artifact_listing_checks_every_blob():
    blobs = {"a" * 40: gzip.compress(pickle.dumps(42)), "b" * 40: gzip.compress(pickle.dumps(Evil()))}
    listing = json.dumps(
        {"objects": {"_transition": "a" * 40, "x": "b" * 40}, "info": {"x": {"encoding": "gzip+pickle-v4"}}}
    ).encode()
    problems = artifact_problems(listing, lambda sha: io.BytesIO(blobs[sha]))
    assert problems == ["artifact 'x' cannot be loaded safely: it references posix.system"]
