"""Fuzzing the MQTT -> Event -> reply path: no input crashes the bridge or escapes the allow-list.

Messages are built as paho delivers them (topic, payload, v5 properties) and go through the
transport's conversion, the dispatcher, real functions on real worker threads, and the reply
encoding.  A recording publisher stands in for the broker connection.
"""

from __future__ import annotations

import asyncio
import json
import paho.mqtt.client as paho
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.config import parse_config
from bridge.dispatch import Dispatcher
from bridge.routing import matches
from bridge.message import Subscription
from bridge.transport import Connection
from tests.support import dispatching
from tests.support.recorder import Recorder
from tests.conftest import TEST_HANDLERS

ALLOWED = ["replies/#"]
ROUTES = [
    {"topic": "f/inspect/#", "handler": "inspect_event", "reply_topic": "out/{topic}"},
    {"topic": "f/boom", "handler": "boom", "reply_topic": "out/boom"},
    {"topic": "f/garbage/+", "handler": "garbage"},
    {"topic": "f/decode", "handler": "decode", "reply_topic": "out/decode", "reply_format": "body"},
    {"topic": "f/async", "handler": "slow_async", "timeout": 0.2},
]
CONFIG = parse_config({"handlers_dir": str(TEST_HANDLERS), "routes": ROUTES,
                       "replies": {"allowed_topics": ALLOWED}, "limits": {"max_payload": 4096}}, TEST_HANDLERS)
FUNCTIONS = dispatching.load(CONFIG)


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
levels = st.sampled_from(["f", "inspect", "boom", "garbage", "decode", "async", "+", "#", "$SYS", "", "x"])
topics = st.lists(levels, min_size=1, max_size=5).map("/".join).filter(
    lambda t: t and "+" not in t and "#" not in t)
response_topics = st.one_of(st.none(), text, st.lists(levels, min_size=1, max_size=4).map("/".join),
                            st.builds(lambda s: "replies/" + s, text))


@st.composite
def messages(draw):
    topic = draw(st.one_of(topics, st.sampled_from(["f/inspect/a", "f/boom", "f/garbage/z", "f/decode", "f/async"])))
    m = paho.MQTTMessage(mid=draw(st.integers(1, 65535)), topic=topic.encode())
    m.qos = draw(st.integers(0, 2))
    m.payload = draw(st.one_of(st.binary(max_size=5000), text.map(str.encode)))
    props = Properties(PacketTypes.PUBLISH)
    rt = draw(response_topics)
    if rt:
        props.ResponseTopic = rt
    if draw(st.booleans()):
        props.CorrelationData = draw(st.binary(max_size=16))
    if draw(st.booleans()):
        props.ContentType = draw(text)
    user = draw(st.lists(st.tuples(st.sampled_from(["method", "query", "X-A", "content-type", ""]) | text, text),
                         max_size=6))
    if user:
        props.UserProperty = user
    m.properties = props
    return m


async def _run(batch: list[paho.MQTTMessage]) -> tuple[Recorder, Dispatcher]:
    recorder = Recorder()
    dispatcher = dispatching.dispatcher(CONFIG, recorder, FUNCTIONS)
    requests = Connection(CONFIG.mqtt, client_id="fuzz", name="requests",
                          subscriptions=[Subscription(r["topic"], 1) for r in ROUTES], on_message=dispatcher.handle)
    for m in batch:
        requests._on_message(requests._client, None, m)  # the edge conversion, as paho calls it
    assert await dispatcher.drain(10), "every message must be answered and acknowledged"
    return recorder, dispatcher


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=1, max_size=8, unique_by=lambda m: m.mid))
def test_no_input_crashes_or_publishes_outside_allowed_topics(batch):
    recorder, dispatcher = asyncio.run(_run(batch))
    filters = [r["topic"] for r in ROUTES]
    for out in recorder.published:
        assert out.topic and "+" not in out.topic and "#" not in out.topic and not out.topic.startswith("$")
        assert not any(matches(f, out.topic) for f in filters), "a reply must never be routed again"
        assert out.topic.startswith("out/") or any(matches(f, out.topic) for f in ALLOWED)
        if out.user_properties:  # reply_format "body": the status travels as a property
            assert out.user_properties[0][0] == "status" and 200 <= int(out.user_properties[0][1]) <= 599
        else:
            doc = json.loads(out.payload)
            assert isinstance(doc["status_code"], int) and set(doc) >= {"status_code", "headers", "body"}
    acked_expected = sorted(m.mid for m in batch if m.qos)
    assert sorted(recorder.acked) == acked_expected, "every QoS >= 1 message is acknowledged once"
    assert dispatcher.in_flight == 0
