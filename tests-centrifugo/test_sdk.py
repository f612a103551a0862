"""The real Centrifugo SDK (centrifuge-python, pinned in requirements.txt) against Herald's
`/connection/websocket`: one edge on the embedded broker, and three edges over one Redis.
Every wait is on an SDK event (asyncio queues fed by the SDK's handlers), bounded by WAIT."""

from __future__ import annotations

import asyncio
import uuid

import jwt
import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    StreamPosition,
    SubscriptionEventHandler,
)

from conftest import WAIT, token, wait_until


async def next_item(q: asyncio.Queue, what: str):
    try:
        return await asyncio.wait_for(q.get(), WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class ClientEvents(ClientEventHandler):
    def __init__(self):
        self.connected = asyncio.Queue()
        self.connecting = asyncio.Queue()
        self.disconnected = asyncio.Queue()
        self.errors = []

    async def on_connected(self, ctx):
        await self.connected.put(ctx)

    async def on_connecting(self, ctx):
        await self.connecting.put(ctx)

    async def on_disconnected(self, ctx):
        await self.disconnected.put(ctx)

    async def on_error(self, ctx):
        self.errors.append(ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self):
        self.publications = asyncio.Queue()
        self.joins = asyncio.Queue()
        self.leaves = asyncio.Queue()
        self.subscribed = asyncio.Queue()
        self.subscribing = asyncio.Queue()
        self.unsubscribed = asyncio.Queue()

    async def on_publication(self, ctx):
        await self.publications.put(ctx.pub)

    async def on_join(self, ctx):
        await self.joins.put(ctx.info)

    async def on_leave(self, ctx):
        await self.leaves.put(ctx.info)

    async def on_subscribed(self, ctx):
        await self.subscribed.put(ctx)

    async def on_subscribing(self, ctx):
        await self.subscribing.put(ctx)

    async def on_unsubscribed(self, ctx):
        await self.unsubscribed.put(ctx)


def channel(prefix: str = "chat") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:10]}"


async def connected(address: str, user: str, **kwargs) -> tuple[Client, ClientEvents]:
    events = ClientEvents()
    kwargs.setdefault("token", token(user))
    client = Client(address, events=events, **kwargs)
    await client.connect()
    await client.ready(timeout=WAIT)
    return client, events


async def subscribed(client: Client, ch: str, **kwargs) -> tuple[object, SubEvents]:
    events = SubEvents()
    sub = client.new_subscription(ch, events=events, **kwargs)
    await sub.subscribe()
    await sub.ready(timeout=WAIT)
    return sub, events


async def test_publish_on_one_edge_is_received_on_another(edges):
    ch = channel()
    alice, _ = await connected(edges[0].ws, "alice")
    bob, _ = await connected(edges[-1].ws, "bob")
    try:
        _, a_events = await subscribed(alice, ch)
        b_sub, _ = await subscribed(bob, ch)
        await b_sub.publish({"text": "hello"})
        pub = await next_item(a_events.publications, "bob's publication")
        assert pub.data == {"text": "hello"}
        assert pub.offset == 1
        assert pub.info.user == "bob"
        assert pub.info.client == bob.client_id
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_presence_and_join_leave(edges):
    ch = channel()
    alice, _ = await connected(edges[0].ws, "alice")
    bob, _ = await connected(edges[-1].ws, "bob")
    try:
        _, a_events = await subscribed(alice, ch, join_leave=True)
        b_sub, _ = await subscribed(bob, ch)
        while (info := await next_item(a_events.joins, "bob's join")).user != "bob":
            pass
        assert info.client == bob.client_id
        presence = await alice.presence(ch)
        assert {c.user for c in presence.clients.values()} == {"alice", "bob"}
        assert set(presence.clients) == {alice.client_id, bob.client_id}
        stats = await alice.presence_stats(ch)
        assert (stats.num_clients, stats.num_users) == (2, 2)
        await b_sub.unsubscribe()
        while (info := await next_item(a_events.leaves, "bob's leave")).user != "bob":
            pass
        stats = await alice.presence_stats(ch)
        assert (stats.num_clients, stats.num_users) == (1, 1)
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_history(edges):
    ch = channel()
    alice, _ = await connected(edges[0].ws, "alice")
    try:
        sub, _ = await subscribed(alice, ch)
        for i in range(1, 6):
            await sub.publish({"n": i})
        newest = await alice.history(ch, limit=3, reverse=True)
        assert [p.data["n"] for p in newest.publications] == [5, 4, 3]
        assert newest.offset == 5 and newest.epoch
        everything = await alice.history(ch, limit=-1)
        assert [p.data["n"] for p in everything.publications] == [1, 2, 3, 4, 5]
        after = await alice.history(ch, limit=2, since=StreamPosition(offset=2, epoch=newest.epoch))
        assert [p.offset for p in after.publications] == [3, 4]
        position = await alice.history(ch)  # the SDK's default limit 0: the position only
        assert (position.publications, position.offset) == ([], 5)
    finally:
        await alice.disconnect()


async def test_reconnect_to_another_edge_recovers_every_missed_publication_once(edges, relay):
    ch = channel()
    reader, reader_events = await connected(relay.ws, "reader")
    publisher, _ = await connected(edges[-1].ws, "publisher")
    try:
        _, events = await subscribed(reader, ch, recoverable=True, positioned=True)
        first = await next_item(events.subscribed, "the first subscribe")
        assert first.recoverable and not first.was_recovering
        assert (await next_item(events.subscribing, "subscribe()")).code == 0
        pub_sub, _ = await subscribed(publisher, ch)
        await pub_sub.publish({"n": 1})
        assert (await next_item(events.publications, "n=1")).offset == 1

        relay.cut()
        cut = await next_item(events.subscribing, "the subscription to notice the cut")
        assert cut.code == 1, cut  # transport closed
        for n in range(2, 7):
            await pub_sub.publish({"n": n})
        other = edges[1] if len(edges) > 1 else edges[0]
        relay.release(other)

        again = await next_item(events.subscribed, "the resubscribe")
        assert again.was_recovering and again.recovered
        got = [await next_item(events.publications, f"missed publication {i}") for i in range(5)]
        assert [(p.offset, p.data["n"]) for p in got] == [(n, n) for n in range(2, 7)]
        # Nothing twice: the next publication is the live one.
        await pub_sub.publish({"n": 7})
        assert (await next_item(events.publications, "n=7")).offset == 7
        assert reader.state == ClientState.CONNECTED
    finally:
        await reader.disconnect()
        await publisher.disconnect()


async def test_a_lost_history_is_signalled_and_the_sdk_resubscribes(own_cluster):
    edge, redis = own_cluster
    ch = channel()
    reader, _ = await connected(edge.ws, "reader")
    try:
        _, events = await subscribed(reader, ch)
        await next_item(events.subscribed, "the first subscribe")
        assert (await next_item(events.subscribing, "subscribe()")).code == 0
        for n in range(1, 4):
            await reader.publish(ch, n)
        assert [(await next_item(events.publications, "a publication")).offset for _ in range(3)] == [1, 2, 3]
        # Redis comes back empty: the channel's history (and epoch) is gone. Herald notices on
        # the resync and sends unsubscribe 2500; the SDK resubscribes from offset 3 and learns
        # that it could not be recovered.
        redis.restart_empty()
        lost = await next_item(events.subscribing, "the unsubscribe push")
        assert lost.code == 2500, lost
        again = await next_item(events.subscribed, "the resubscribe")
        assert again.was_recovering and not again.recovered
        await asyncio.to_thread(wait_until, edge.ready, "the edge ready again")
        await reader.publish(ch, "new")
        pub = await next_item(events.publications, "the first publication of the new history")
        assert (pub.offset, pub.data) == (1, "new")
    finally:
        await reader.disconnect()


async def test_an_expired_token_is_replaced_through_the_token_callback(single):
    calls = []

    async def get_token():
        calls.append("connect")
        return token("carol")

    carol, events = await connected(single[0].ws, "carol", token=token("carol", expires_in=-60), get_token=get_token)
    try:
        assert calls == ["connect"]
        assert any(getattr(e.error, "code", None) == 109 for e in events.errors), events.errors
        ch = channel()
        sub, _ = await subscribed(carol, ch)
        presence = await carol.presence(ch)
        assert [c.user for c in presence.clients.values()] == ["carol"]
    finally:
        await carol.disconnect()


async def test_a_short_lived_token_is_refreshed_before_it_expires(single):
    refreshed = asyncio.Event()

    async def get_token():
        refreshed.set()
        return token("dave")

    dave, events = await connected(single[0].ws, "dave", token=token("dave", expires_in=2), get_token=get_token)
    try:
        await next_item(events.connected, "connected")
        assert (await next_item(events.connecting, "the first connecting")).code == 0  # connect()
        await asyncio.wait_for(refreshed.wait(), WAIT)
        # Past the first token's exp + leeway (2 s in conftest) the session would end with
        # 3005 had the refresh not extended it: nothing may happen for 4 s.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(events.connecting.get(), 4)
        assert dave.state == ClientState.CONNECTED
        ch = channel()
        sub, sub_events = await subscribed(dave, ch)
        await sub.publish("still here")
        assert (await next_item(sub_events.publications, "own publication")).data == "still here"
    finally:
        await dave.disconnect()


async def test_permission_denied_is_103(edges):
    erin, _ = await connected(edges[0].ws, "erin")
    try:
        events = SubEvents()
        sub = erin.new_subscription(channel("vip"), events=events)
        await sub.subscribe()
        ctx = await next_item(events.unsubscribed, "the refusal")
        assert ctx.code == 103, ctx
        assert erin.state == ClientState.CONNECTED
    finally:
        await erin.disconnect()


async def test_a_token_signed_with_another_key_is_disconnected_3500(single):
    forged = jwt.encode({"sub": "mallory"}, "not-the-secret-0123456789012345678", algorithm="HS256")
    events = ClientEvents()
    client = Client(single[0].ws, events=events, token=forged)
    await client.connect()
    try:
        ctx = await next_item(events.disconnected, "the disconnect")
        assert ctx.code == 3500, ctx
        assert client.state == ClientState.DISCONNECTED
    finally:
        await client.disconnect()
