"""The MTA-STS policy cache (RFC 8461 §5): the first look is awaited by nobody but the
router, a policy is kept per max_age and through failed refreshes, a new TXT id fetches the
policy again, and the file beside the rules file keeps policies across a restart."""

import asyncio

from mta.tls.cache import PENDING, StsPolicies
from mta.tls.fetch import FetchError, Fetched
from mta.tls.policy import Policy

ENFORCE = Policy("enforce", ("mx.example.com",), 86400)


class FakeFetcher:
    def __init__(self):
        self.txt = {"example.com": "1"}
        self.policies = {"example.com": ENFORCE}
        self.fail = False
        self.policy_fetches = 0

    async def fetch_txt(self, domain):
        if self.fail:
            raise FetchError("DNS failure")
        return Fetched(self.txt.get(domain), None, 60.0)

    async def fetch_policy(self, domain):
        self.policy_fetches += 1
        if self.fail:
            raise FetchError("HTTP 500")
        return self.policies[domain]


class Wall:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


async def _settle(cache, domain):
    await cache.settled(domain, 5)


def test_first_look_is_pending_then_the_policy_is_in_force():
    async def main():
        fetcher, wall = FakeFetcher(), Wall()
        cache = StsPolicies(fetcher, wall, None)
        assert cache.policy("example.com") is PENDING
        await _settle(cache, "example.com")
        assert cache.policy("example.com") == ENFORCE
        assert cache.policy("nopolicy.test") is PENDING
        await _settle(cache, "nopolicy.test")
        assert cache.policy("nopolicy.test") is None
    asyncio.run(main())


def test_a_known_policy_survives_failed_refreshes_until_it_expires():
    async def main():
        fetcher, wall = FakeFetcher(), Wall()
        cache = StsPolicies(fetcher, wall, None, min_ttl=1, max_ttl=60)
        cache.policy("example.com")
        await _settle(cache, "example.com")
        fetcher.fail = True
        wall.t += 3600  # the TXT answer is stale: a refresh starts, and fails
        assert cache.policy("example.com") == ENFORCE
        await _settle(cache, "example.com")
        assert "example.com" in cache.errors
        assert cache.policy("example.com") == ENFORCE
        wall.t += 86400  # past max_age: gone, whatever the refreshes did
        assert cache.policy("example.com") is None
    asyncio.run(main())


def test_a_new_txt_id_fetches_the_policy_again():
    async def main():
        fetcher, wall = FakeFetcher(), Wall()
        cache = StsPolicies(fetcher, wall, None, min_ttl=1, max_ttl=60)
        cache.policy("example.com")
        await _settle(cache, "example.com")
        wall.t += 61
        cache.policy("example.com")
        await _settle(cache, "example.com")
        assert fetcher.policy_fetches == 1  # same id, policy far from its end: not fetched again
        fetcher.txt["example.com"] = "2"
        fetcher.policies["example.com"] = testing = Policy("testing", ("*.example.com",), 3600)
        wall.t += 61
        assert cache.policy("example.com") == ENFORCE  # the refresh does not hold mail
        await _settle(cache, "example.com")
        assert cache.policy("example.com") == testing and fetcher.policy_fetches == 2
    asyncio.run(main())


def test_a_policy_is_refreshed_before_it_expires():
    async def main():
        fetcher, wall = FakeFetcher(), Wall()
        cache = StsPolicies(fetcher, wall, None, min_ttl=1, max_ttl=60)
        cache.policy("example.com")
        await _settle(cache, "example.com")
        wall.t += 86400 * 0.6  # past half its max_age, same id
        cache.policy("example.com")
        await _settle(cache, "example.com")
        assert fetcher.policy_fetches == 2
        assert cache.known("example.com").expires == wall.t + 86400
    asyncio.run(main())


def test_policies_survive_a_restart_in_the_state_file(tmp_path):
    path = str(tmp_path / "mta.yaml.mta-sts.json")

    async def first():
        cache = StsPolicies(FakeFetcher(), wall, path)
        cache.policy("example.com")
        await _settle(cache, "example.com")

    async def second():
        fetcher = FakeFetcher()
        fetcher.fail = True  # the policy server is down after the restart
        cache = StsPolicies(fetcher, wall, path)
        assert cache.policy("example.com") == ENFORCE  # at once: no wait for a look
    wall = Wall()
    asyncio.run(first())
    asyncio.run(second())
    wall.t += 86401
    assert StsPolicies(FakeFetcher(), wall, path).known("example.com") is None  # expired while down


def test_a_burst_of_new_policies_costs_few_writes_of_the_state_file(tmp_path, monkeypatch):
    from mta.tls import cache as cache_module

    writes = []
    real = cache_module._write
    monkeypatch.setattr(cache_module, "_write", lambda path, text: (writes.append(text), real(path, text)))
    path = str(tmp_path / "mta.yaml.mta-sts.json")

    async def main():
        fetcher, wall = FakeFetcher(), Wall()
        domains = [f"d{i}.test" for i in range(20)]
        for domain in domains:
            fetcher.txt[domain] = "1"
            fetcher.policies[domain] = ENFORCE
        cache = StsPolicies(fetcher, wall, path)
        for domain in domains:
            cache.policy(domain)
        for domain in domains:
            await _settle(cache, domain)
        return cache

    asyncio.run(main())
    assert 1 <= len(writes) < 20
    restarted = StsPolicies(FakeFetcher(), Wall(), path)
    assert all(restarted.known(f"d{i}.test") for i in range(20))  # the last write has them all


def test_a_published_policy_that_cannot_be_had_is_remembered_for_the_report():
    async def main():
        fetcher, wall = FakeFetcher(), Wall()
        cache = StsPolicies(fetcher, wall, None, min_ttl=1, max_ttl=60)
        fetcher.fail_policy = FetchError("https://mta-sts.example.com/...: HTTP 500")

        async def failing(domain):
            raise fetcher.fail_policy
        fetcher.fetch_policy = failing
        cache.policy("example.com")
        await _settle(cache, "example.com")
        assert cache.policy("example.com") is None  # mail goes without a policy
        assert cache.unfetched == {"example.com": "sts-policy-fetch-error"}
        fetcher.fail_policy = FetchError("... policy mode 'strict' ...", "sts-policy-invalid")
        wall.t += 301  # a failed look is tried again after FAILURE_RETRY
        cache.policy("example.com")
        await _settle(cache, "example.com")
        assert cache.unfetched == {"example.com": "sts-policy-invalid"}
        del fetcher.fetch_policy  # the policy server is fixed
        wall.t += 301
        cache.policy("example.com")
        await _settle(cache, "example.com")
        assert cache.unfetched == {} and cache.policy("example.com") == ENFORCE
    asyncio.run(main())
