"""Domain rules: syntax errors carry ngrok's codes, wildcards match at any depth, the most specific name
wins, coverage follows reservations, and random names are readable, valid and unique."""

from __future__ import annotations

import re

import pytest

from hatchway.edge import domains as d
from hatchway.store.base import DomainError


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("example.com", "example.com"),
        ("App.Example.COM", "app.example.com"),
        ("  app.example.com.  ", "app.example.com"),  # one trailing root dot is DNS spelling, not an error
        ("*.example.com", "*.example.com"),
        ("*.a.b.example.com", "*.a.b.example.com"),
        ("a-b.c-d.example.com", "a-b.c-d.example.com"),
        ("123.example.com", "123.example.com"),
        ("xn--bcher-kva.example.com", "xn--bcher-kva.example.com"),
        ("herring-sharing-precisely.hatchway.localhost", "herring-sharing-precisely.hatchway.localhost"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_valid_names_are_normalised(given: str, expected: str) -> None:
    assert d.validate_domain(given) == expected


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("", "ERR_NGROK_326"),
        ("1.21 gigawatts", "ERR_NGROK_326"),  # what the official SDK test suites send
        ("app.exa$mple.com", "ERR_NGROK_326"),
        ("bücher.de", "ERR_NGROK_326"),
        ("my_app.example.com", "ERR_NGROK_355"),
        ("a..example.com", "ERR_NGROK_327"),
        ("example.com..", "ERR_NGROK_327"),
        (".example.com", "ERR_NGROK_328"),
        ("-app.example.com", "ERR_NGROK_328"),
        ("app-.example.com", "ERR_NGROK_329"),
        ("ab--cd.example.com", "ERR_NGROK_330"),
        ("xn--a.example.com", "ERR_NGROK_347"),
        ("a" * 64 + ".com", "ERR_NGROK_396"),
        (".".join(["abcdefghi"] * 26), "ERR_NGROK_397"),  # 259 characters
        ("app.*.example.com", "ERR_NGROK_402"),
        ("*.*.example.com", "ERR_NGROK_402"),
        ("*-app.example.com", "ERR_NGROK_403"),
        ("**.example.com", "ERR_NGROK_403"),
        ("app*.example.com", "ERR_NGROK_403"),
        ("localhost", "ERR_NGROK_331"),
        ("*", "ERR_NGROK_331"),
        ("*.com", "ERR_NGROK_416"),
    ],
)
def test_invalid_names_raise_ngroks_code(name: str, code: str) -> None:
    with pytest.raises(DomainError) as info:
        d.validate_domain(name)
    assert info.value.ngrok_code == code
    assert code in str(info.value)
    assert info.value.message


def test_total_length_limit_is_253() -> None:
    labels = ["a" * 63, "b" * 63, "c" * 63, "d" * 61]
    assert len(".".join(labels)) == 253
    assert d.validate_domain(".".join(labels))
    with pytest.raises(DomainError, match="ERR_NGROK_397"):
        d.validate_domain(".".join([*labels[:3], "d" * 62]))


def test_wildcard_matches_any_depth_below_but_not_the_base() -> None:
    assert d.wildcard_matches("*.example.com", "a.example.com")
    assert d.wildcard_matches("*.example.com", "a.b.example.com")
    assert d.wildcard_matches("*.example.com", "foo.bar.baz.Example.COM")
    assert not d.wildcard_matches("*.example.com", "example.com")
    assert not d.wildcard_matches("*.example.com", "badexample.com")
    assert not d.wildcard_matches("*.example.com", "a.example.org")
    assert not d.wildcard_matches("app.example.com", "app.example.com")  # not a wildcard


def test_is_wildcard_and_base() -> None:
    assert d.is_wildcard("*.example.com")
    assert not d.is_wildcard("example.com")
    assert d.wildcard_base("*.example.com") == "example.com"
    assert d.wildcard_base("app.example.com") == "app.example.com"


@pytest.mark.parametrize(
    ("host", "candidates", "expected"),
    [
        # exact beats any wildcard (ngrok: app.example.com beats *.example.com)
        ("app.example.com", ["*.example.com", "app.example.com"], "app.example.com"),
        ("app.example.com", ["*.example.com"], "*.example.com"),
        # the longer wildcard beats the shorter one, whatever the order given
        ("x.a.example.com", ["*.example.com", "*.a.example.com"], "*.a.example.com"),
        ("x.a.example.com", ["*.a.example.com", "*.example.com"], "*.a.example.com"),
        ("x.y.a.example.com", ["*.example.com", "*.a.example.com"], "*.a.example.com"),
        # a plain name never serves its subdomains when routing
        ("x.app.example.com", ["app.example.com"], None),
        ("example.com", ["*.example.com"], None),
        ("other.org", ["*.example.com", "app.example.com"], None),
        ("APP.example.com", ["app.example.com"], "app.example.com"),
        ("app.example.com", [], None),
    ],
)
def test_most_specific_routing(host: str, candidates: list[str], expected: str | None) -> None:
    assert d.most_specific(host, candidates) == expected
    assert d.most_specific(host, iter(candidates)) == expected  # any iterable, read once


def test_route_keys_agree_with_most_specific() -> None:
    assert d.route_keys("A.b.example.com") == [
        "a.b.example.com",
        "*.b.example.com",
        "*.example.com",
        "*.com",
    ]
    online = {"*.example.com", "*.b.example.com", "c.b.example.com"}
    for host in ["a.b.example.com", "c.b.example.com", "z.example.com", "example.com", "q.r.b.example.com"]:
        by_keys = next((k for k in d.route_keys(host) if k in online), None)
        assert by_keys == d.most_specific(host, online), host


def test_under_base() -> None:
    assert d.under_base("cedar-kite-opal.hatchway.localhost", "hatchway.localhost")
    assert d.under_base("a.b.hatchway.localhost", "Hatchway.Localhost")
    assert not d.under_base("hatchway.localhost", "hatchway.localhost")
    assert not d.under_base("evilhatchway.localhost", "hatchway.localhost")
    assert not d.under_base("a.example.com", "hatchway.localhost")


def test_covers_follows_reservations() -> None:
    assert d.covers("foo.example.com", "foo.example.com")
    assert d.covers("foo.example.com", "a.b.foo.example.com")
    assert d.covers("foo.example.com", "*.foo.example.com")
    assert not d.covers("foo.example.com", "example.com")
    assert not d.covers("foo.example.com", "barfoo.example.com")
    assert d.covers("*.example.com", "a.b.example.com")
    assert d.covers("*.example.com", "*.a.example.com")
    assert d.covers("*.example.com", "*.example.com")
    assert not d.covers("*.example.com", "example.com")


def test_covering_names_lists_every_cover_most_specific_first() -> None:
    assert d.covering_names("a.foo.example.com") == [
        "a.foo.example.com",
        "*.foo.example.com",
        "foo.example.com",
        "*.example.com",
        "example.com",
        "*.com",
        "com",
    ]
    assert d.covering_names("*.foo.example.com") == [
        "*.foo.example.com",
        "foo.example.com",
        "*.example.com",
        "example.com",
        "*.com",
        "com",
    ]
    for name in ["a.foo.example.com", "*.foo.example.com", "foo.example.com"]:
        for cover in d.covering_names(name):
            assert d.covers(cover, name), (cover, name)


NAME = re.compile(r"^[a-z]+-[a-z]+-[a-z]+(-[0-9a-f]{4})?\.hatchway\.localhost$")


def test_word_list_is_ours_and_big_enough() -> None:
    assert len(d.WORDS) >= 200
    assert len(set(d.WORDS)) == len(d.WORDS)
    assert all(w.isascii() and w.isalpha() and w.islower() and len(w) <= 9 for w in d.WORDS)


def test_random_names_are_readable_valid_and_unique() -> None:
    names = {d.random_name("hatchway.localhost") for _ in range(500)}
    assert len(names) == 500
    for name in names:
        assert NAME.match(name), name
        assert d.validate_domain(name) == name
        words = name.split(".")[0].split("-")
        assert len(set(words)) == 3 and set(words) <= set(d.WORDS)


def test_random_name_retries_and_adds_a_suffix_when_needed() -> None:
    asked: list[str] = []

    def taken(host: str) -> bool:
        asked.append(host)
        return len(asked) < 4

    name = d.random_name("Hatchway.Localhost", taken)
    assert name == asked[-1] and len(asked) == 4
    assert NAME.match(name) and not re.search(r"-[0-9a-f]{4}\.", name)

    asked.clear()
    busy = {"yes"}

    def plain_names_taken(host: str) -> bool:
        asked.append(host)
        return not re.search(r"-[0-9a-f]{4}\.", host) and bool(busy)

    suffixed = d.random_name("hatchway.localhost", plain_names_taken, attempts=6)
    assert re.search(r"-[0-9a-f]{4}\.hatchway\.localhost$", suffixed)
    assert len(asked) == 4  # three plain tries, then the first suffixed one


def test_random_name_gives_up_when_everything_is_taken() -> None:
    with pytest.raises(RuntimeError):
        d.random_name("hatchway.localhost", lambda host: True, attempts=5)


def test_random_name_rejects_a_bad_base() -> None:
    with pytest.raises(DomainError):
        d.random_name("bad_base.example.com")
