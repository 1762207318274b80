"""Static `mx:` routes (mta.routing.table): the answer is kept once per `domains:` rule, so a
`*.suffix` rule serving any number of subdomains holds one entry, and every subdomain's
mail is routed from it without another lookup."""

import asyncio
import time

from mta.config import parse_config
from mta.routing.mx import MxResolver
from mta.routing.table import Router
from mta.routing.rules import Rules
import orjson

from mta.intake.message import decode


def test_a_wildcard_static_route_is_kept_once_for_all_its_subdomains() -> None:
    rules = Rules(parse_config({"domains": {"*.hosted.example": {"mx": ["[192.0.2.7]:2525"]}}}))
    resolver = MxResolver(("127.0.0.1",), 53, 1.0, 30.0, 3600.0, time.time)
    routed = []

    async def scenario() -> Router:
        router = Router(resolver, rules, lambda j, answer, resolved: routed.append((answer, resolved.key)),
                        lambda j, failure, resolved: routed.append(failure))
        for i in range(1000):
            body = orjson.dumps({"id": f"m{i}", "recipient": f"u@s{i}.hosted.example",
                                 "envelope": "s@sender.test", "mime": "Subject: x\r\n\r\nhello\r\n"})
            router.route(decode(body, {}, "bulk", time.time()))
            await asyncio.sleep(0)
        while len(routed) < 1000:
            await asyncio.sleep(0.001)
        return router

    router = asyncio.run(scenario())
    assert len(router._static) == 1
    assert {key for _, key in routed} == {"domain:*.hosted.example"}
    assert {answer.hosts[0].addresses for answer, _ in routed} == {("192.0.2.7",)}
