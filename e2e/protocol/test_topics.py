"""Topic names, filters and wildcard matching (MQTT 3.1.1 §4.7, MQTT 5.0 §4.7, §3.3.4, §3.8.2.1.2)."""

from __future__ import annotations

import queue

import pytest

from helpers import IS_STARLING, QUIET, TIMEOUT, pprops, prop

V311, V5 = 4, 5
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
# Starling keeps `$` topics to itself unless told otherwise; these tests need a client to
# publish on one (Mosquitto allows it, but for $SYS).
DOLLAR_TOPICS = {"client_dollar_topics": True} if IS_STARLING else {}


def matches(broker, paho, version, topic_filter, topics, sentinel_topic):
    """Subscribe ``topic_filter``, publish to each of ``topics`` then to ``sentinel_topic``
    (which must match the filter) and return the topics delivered before the sentinel."""
    sub = paho(broker, "sub", version=version)
    sub.subscribe(topic_filter, 1)
    pub = paho(broker, "pub", version=version)
    for t in topics:
        pub.publish(t, t.encode(), qos=1)
    pub.publish(sentinel_topic, b"sentinel", qos=1)
    return sorted(m.topic for m in sub.until(b"sentinel"))


@both_versions
def test_single_level_wildcard(broker, paho, version):
    """MQTT 3.1.1 / 5.0 §4.7.1.3: '+' matches exactly one topic level, including an empty one."""
    got = matches(broker, paho, version, "a/+/c",
                  ["a/b/c", "a/x/c", "a//c", "a/c", "a/b/c/d", "a/b/x", "b/b/c"], "a/s/c")
    assert got == ["a//c", "a/b/c", "a/x/c"]


@both_versions
def test_multi_level_wildcard_includes_parent(broker, paho, version):
    """MQTT 3.1.1 / 5.0 §4.7.1.2: '#' matches the parent level and any number of child levels
    ('sport/#' also matches 'sport')."""
    got = matches(broker, paho, version, "a/#", ["a", "a/b", "a/b/c", "ab", "b/a", "/a"], "a/s")
    assert got == ["a", "a/b", "a/b/c"]


@both_versions
def test_plus_alone_and_leading_separator(broker, paho, version):
    """MQTT 3.1.1 / 5.0 §4.7.1.3: '+' alone matches exactly one level ('x', not 'x/y' or '/x')."""
    got = matches(broker, paho, version, "+", ["x", "x/y", "/x"], "s")
    assert got == ["x"]


@both_versions
def test_plus_plus_matches_leading_empty_level(broker, paho, version):
    """MQTT 3.1.1 / 5.0 §4.7.1.3 (non-normative example): '+/+' and '/+' match '/finance'."""
    got = matches(broker, paho, version, "+/+", ["/finance", "finance", "a/b/c"], "s/s")
    assert got == ["/finance"]


@both_versions
def test_hash_alone_matches_everything_but_dollar_topics(broker_factory, paho, version):
    """MQTT 3.1.1 / 5.0 §4.7.1.2 and §4.7.2 MQTT-4.7.2-1: '#' matches every topic except those
    beginning with '$'."""
    broker = broker_factory(**DOLLAR_TOPICS)
    got = matches(broker, paho, version, "#", ["a", "a/b", "/", "$dollar/x"], "s")
    assert got == ["/", "a", "a/b"]


@both_versions
def test_dollar_topics_not_matched_by_leading_wildcards(broker_factory, paho, version):
    """MQTT 3.1.1 / 5.0 §4.7.2 MQTT-4.7.2-1: filters starting with a wildcard ('#', '+/x') do not
    match topic names beginning with '$'; an explicit '$dollar/#' does."""
    broker = broker_factory(**DOLLAR_TOPICS)
    sub = paho(broker, "sub", version=version)
    sub.subscribe("#", 1)
    sub.subscribe("+/x", 1)
    sub.subscribe("+", 1)
    dollar = paho(broker, "dollar", version=version)
    dollar.subscribe("$dollar/#", 1)
    pub = paho(broker, "pub", version=version)
    pub.publish("$dollar/x", b"dollar", qos=1)
    pub.publish("$dollar", b"dollar-root", qos=1)
    pub.publish("s/x", b"sentinel", qos=1)
    before = sub.until(b"sentinel")
    assert before == [], [(m.topic, m.payload) for m in before]
    got = dollar.get_n(1)
    assert got[0].topic == "$dollar/x"


@both_versions
def test_topics_are_case_sensitive_and_may_contain_spaces(broker, paho, version):
    """MQTT 3.1.1 / 5.0 §4.7.3: topic names are case sensitive and may contain spaces."""
    got = matches(broker, paho, version, "Case Sensitive/+",
                  ["Case Sensitive/a", "case sensitive/a", "CASE SENSITIVE/a"], "Case Sensitive/s")
    assert got == ["Case Sensitive/a"]


def test_unicode_topic_round_trip(broker, paho):
    """MQTT 5.0 §1.5.4 / §4.7.3: topic names are UTF-8 strings; non-ASCII names are delivered
    unchanged."""
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("ünï/+/\U0002A6D4", 1)
    pub = paho(broker, "pub", version=V5)
    pub.publish("ünï/ß/\U0002A6D4", b"x", qos=1)
    assert sub.get().topic == "ünï/ß/\U0002A6D4"


@both_versions
def test_unsubscribe_stops_delivery(broker, paho, version):
    """MQTT 3.1.1 §3.10.4 MQTT-3.10.4-2 / MQTT 5.0 §3.10.4 MQTT-3.10.4-2: after UNSUBACK the
    Server stops adding new messages for that filter."""
    sub = paho(broker, "sub", version=version)
    sub.subscribe("us/a", 1)
    sub.subscribe("us/sentinel", 1)
    sub.unsubscribe("us/a")
    pub = paho(broker, "pub", version=version)
    pub.publish("us/a", b"after-unsubscribe", qos=1)
    pub.publish("us/sentinel", b"sentinel", qos=1)
    assert sub.until(b"sentinel") == []


@both_versions
def test_resubscribe_replaces_subscription(broker, paho, version):
    """MQTT 3.1.1 §3.8.4 MQTT-3.8.4-3 / MQTT 5.0 MQTT-3.8.4-3: a SUBSCRIBE with a filter identical
    to an existing one replaces it (new QoS applies; still one copy per message)."""
    sub = paho(broker, "sub", version=version)
    sub.subscribe("rs/t", 2)
    sub.subscribe("rs/t", 0)
    pub = paho(broker, "pub", version=version)
    pub.publish("rs/t", b"m", qos=2)
    pub.publish("rs/t", b"sentinel", qos=2)
    before = sub.until(b"sentinel")
    assert [(m.payload, m.qos) for m in before] == [(b"m", 0)]


def test_v311_overlapping_subscriptions_delivered_at_least_once(broker, paho):
    """MQTT 3.1.1 §3.3.5 MQTT-3.3.5-1: with overlapping subscriptions the message is delivered
    respecting the maximum QoS of the matching subscriptions; extra copies are allowed, so at
    least one copy is asserted, and one copy must have the maximum QoS."""
    sub = paho(broker, "sub", version=V311)
    sub.subscribe("ov/#", 0)
    sub.subscribe("ov/+", 1)
    pub = paho(broker, "pub", version=V311)
    pub.publish("ov/a", b"m", qos=1)
    first = sub.get()
    copies = [first]
    while True:  # collect any further copies (bounded quiet period)
        try:
            copies.append(sub.messages.get(timeout=QUIET))
        except queue.Empty:
            break
    assert 1 <= len(copies) <= 2
    assert all(m.payload == b"m" for m in copies)
    assert max(m.qos for m in copies) == 1


def _collect_copies(sub):
    first = sub.get()
    copies = [first]
    while True:
        try:
            copies.append(sub.messages.get(timeout=QUIET))
        except queue.Empty:
            return copies


def test_v5_overlapping_subscriptions_carry_subscription_identifiers(broker, paho):
    """MQTT 5.0 §3.3.4 MQTT-3.3.4-3, MQTT-3.3.4-4, MQTT-3.3.4-5 and §3.8.2.1.2: with overlapping
    subscriptions the Server sends either one copy carrying every matching Subscription
    Identifier or one copy per subscription each carrying its own identifier."""
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("sid/#", 1, props=pprops("SUBSCRIBE", SubscriptionIdentifier=11))
    sub.subscribe("sid/+", 1, props=pprops("SUBSCRIBE", SubscriptionIdentifier=22))
    sub.subscribe("sid/other", 1, props=pprops("SUBSCRIBE", SubscriptionIdentifier=33))
    pub = paho(broker, "pub", version=V5)
    pub.publish("sid/a", b"m", qos=1)
    copies = _collect_copies(sub)
    ids = [sorted(prop(m, "SubscriptionIdentifier", [])) for m in copies]
    if len(copies) == 1:
        assert ids == [[11, 22]]
    else:
        assert sorted(ids) == [[11], [22]], ids


@pytest.mark.starling_only(reason="Starling sends one copy; Mosquitto 2.0.11 one copy per subscription (both allowed)")
def test_v5_overlapping_subscriptions_single_delivery_with_all_identifiers(broker, paho):
    """MQTT 5.0 §3.3.4 MQTT-3.3.4-2, MQTT-3.3.4-4: Starling delivers one copy at the maximum
    granted QoS carrying the Subscription Identifiers of all matching subscriptions."""
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("sid/#", 0, props=pprops("SUBSCRIBE", SubscriptionIdentifier=11))
    sub.subscribe("sid/+", 1, props=pprops("SUBSCRIBE", SubscriptionIdentifier=22))
    sub.subscribe("sid/a", 2)  # no identifier
    pub = paho(broker, "pub", version=V5)
    pub.publish("sid/a", b"m", qos=2)
    copies = _collect_copies(sub)
    assert len(copies) == 1, [(m.qos, prop(m, "SubscriptionIdentifier")) for m in copies]
    assert sorted(prop(copies[0], "SubscriptionIdentifier", [])) == [11, 22]
    assert copies[0].qos == 2


def test_v5_subscription_identifier_on_single_subscription(broker, paho):
    """MQTT 5.0 §3.8.2.1.2 / §3.3.2.3.8 MQTT-3.3.4-3: a message matching a subscription made with
    a Subscription Identifier carries it; one without an identifier carries none."""
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("sid1/a", 1, props=pprops("SUBSCRIBE", SubscriptionIdentifier=268435455))
    sub.subscribe("sid1/b", 1)
    pub = paho(broker, "pub", version=V5)
    pub.publish("sid1/a", b"a", qos=1)
    pub.publish("sid1/b", b"b", qos=1)
    a, b = sorted(sub.get_n(2), key=lambda m: m.topic)
    assert prop(a, "SubscriptionIdentifier") == [268435455]
    assert prop(b, "SubscriptionIdentifier") is None


def test_topic_level_separator_only_topics(broker, paho):
    """MQTT 5.0 §4.7.1.1: '/' alone is a valid topic with two empty levels; 'a/' differs from 'a'."""
    sub = paho(broker, "sub", version=V5)
    sub.subscribe("+/+", 1)
    sub.subscribe("a", 1)
    pub = paho(broker, "pub", version=V5)
    pub.publish("/", b"slash", qos=1)
    pub.publish("a/", b"a-slash", qos=1)
    pub.publish("a", b"sentinel", qos=1)
    before = sorted(m.payload for m in sub.until(b"sentinel"))
    assert before == [b"a-slash", b"slash"]


def test_long_topic_round_trip(broker, paho):
    """MQTT 5.0 §1.5.4 / §4.7: a 500-byte, 20-level topic name is routed correctly to a
    wildcard subscription."""
    topic = "/".join(f"level{i:02d}-" + "x" * 16 for i in range(20))
    assert len(topic) == 499
    sub = paho(broker, "sub", version=V5)
    sub.subscribe(topic.rsplit("/", 1)[0] + "/#", 1)
    pub = paho(broker, "pub", version=V5)
    pub.publish(topic, b"deep", qos=1)
    m = sub.get(TIMEOUT)
    assert m.topic == topic and m.payload == b"deep"
