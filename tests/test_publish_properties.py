"""The transport packs reply properties itself: byte for byte what paho's Properties packs."""

from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.message import Outbound
from bridge.mqttclient import PublishProperties as _PublishProperties

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=300)


@given(content_type=st.one_of(st.none(), text.filter(bool)), correlation=st.one_of(st.none(), st.binary(max_size=300)),
       user=st.lists(st.tuples(text, text), max_size=40))
def test_packed_properties_match_paho(content_type, correlation, user):
    out = Outbound("t", b"", 1, correlation, content_type, user)
    reference = Properties(PacketTypes.PUBLISH)
    if content_type:
        reference.ContentType = content_type
    if correlation is not None:
        reference.CorrelationData = correlation
    if user:
        reference.UserProperty = user
    packed = _PublishProperties(out).pack()
    assert packed == reference.pack()
    decoded = Properties(PacketTypes.PUBLISH)
    decoded.unpack(packed)
    assert getattr(decoded, "UserProperty", []) == user
