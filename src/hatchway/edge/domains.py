"""Domain-name rules of the edge: syntax, random names, wildcard matching and coverage.

Pure functions over strings. This module must not do I/O (no database, DNS, sockets or clock) and must
not know who owns what: ownership lives in ``hatchway.store``, which calls these rules.

Vocabulary used below:
- a *wildcard* is ``*.example.com``: it matches every name below ``example.com`` at any depth
  (``a.example.com``, ``a.b.example.com``) but not ``example.com`` itself (ngrok-reference §7);
- a *reservation* of ``foo.example.com`` gives its account the name and every nested subdomain, so it
  *covers* ``a.b.foo.example.com`` (and ``*.foo.example.com``);
- routing an online endpoint is narrower: ``most_specific`` picks the exact name, else the wildcard with
  the longest suffix; a plain endpoint name never serves its subdomains.

Syntax errors carry the codes ngrok uses when an agent binds a bad name (ngrok-reference §6), so an SDK
sees the same ``ERR_NGROK_*`` it would see against ngrok.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable

from hatchway.store.base import DomainError

MAX_LABEL = 63
MAX_NAME = 253
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")

# Our own list of short, common, inoffensive English words for readable random names (three are drawn
# per name, so 240 words give about 13.6 million names before a suffix is needed).
WORDS: tuple[str, ...] = (
    # things
    "acorn", "anchor", "apple", "arrow", "badge", "basket", "beacon", "bell", "bench", "berry",
    "blanket", "boat", "bottle", "branch", "bread", "brick", "bridge", "brook", "bucket", "button",
    "cabin", "candle", "canoe", "canyon", "carpet", "castle", "cedar", "chair", "cloud", "clover",
    "coast", "comet", "copper", "coral", "cotton", "cradle", "crystal", "daisy", "desert", "dune",
    "engine", "feather", "fern", "field", "flower", "forest", "fountain", "garden", "glacier", "grove",
    "harbor", "hill", "honey", "island", "jacket", "kettle", "ladder", "lake", "lantern", "leaf",
    "lemon", "marble", "meadow", "mirror", "moon", "mountain", "needle", "ocean", "orchard", "paper",
    "pebble", "pepper", "piano", "pillow", "planet", "pocket", "pond", "quilt", "rain", "ribbon",
    "river", "rocket", "saddle", "sail", "shell", "signal", "silver", "spoon", "spring", "star",
    "stone", "summit", "teapot", "thunder", "timber", "tower", "trail", "tulip", "valley", "velvet",
    "violin", "wagon", "window", "winter",
    # animals
    "badger", "beaver", "bison", "camel", "otter", "falcon", "ferret", "finch", "gecko", "heron",
    "herring", "koala", "lizard", "llama", "magpie", "marmot", "moose", "panda", "parrot", "pelican",
    "penguin", "puffin", "rabbit", "raven", "robin", "salmon", "seal", "sparrow", "squid", "swan",
    "tiger", "toucan", "trout", "turtle", "walrus", "weasel", "whale", "wombat", "zebra", "yak",
    # describing words
    "amber", "bold", "brave", "breezy", "bright", "calm", "clever", "cosy", "crisp", "curious",
    "dapper", "eager", "early", "fancy", "feasible", "fluffy", "friendly", "gentle", "glad", "golden",
    "happy", "humble", "jolly", "kind", "lively", "lucky", "mellow", "merry", "misty", "modest",
    "nimble", "noble", "patient", "plucky", "polite", "proud", "quick", "quiet", "rapid", "rosy",
    "rustic", "shiny", "silent", "simple", "sleepy", "smooth", "snowy", "sunny", "swift", "tidy",
    "vivid", "warm", "wise", "witty", "young", "zesty",
    # doing words
    "baking", "biking", "blooming", "building", "dancing", "drifting", "floating", "flying", "glowing",
    "hiking", "humming", "jumping", "laughing", "painting", "racing", "reading", "roaming", "rowing",
    "running", "sailing", "sharing", "singing", "skating", "sliding", "smiling", "spinning", "swimming",
    "thinking", "walking", "wandering", "whistling", "writing",
    # how
    "boldly", "briskly", "calmly", "gently", "gladly", "happily", "kindly", "neatly", "precisely",
    "quickly", "quietly", "rapidly", "simply", "softly", "swiftly", "vaguely", "warmly", "wisely",
)  # fmt: skip


def _fail(code: str, message: str) -> DomainError:
    return DomainError(code, message)


def normalize(name: str) -> str:
    """Lowercase, without surrounding spaces or one trailing root dot. No validation."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") and not name.endswith("..") else name


def _check_label(label: str, first: bool, name: str) -> None:
    if "*" in label:
        if not first:
            raise _fail(
                "ERR_NGROK_402",
                f"Only the first part of a domain may be a '*' wildcard. Failed to bind the domain {name}.",
            )
        if label != "*":
            raise _fail(
                "ERR_NGROK_403",
                f"The first part of a wildcard domain must be a single '*' character, got {label!r}. "
                f"Failed to bind the domain {name}.",
            )
        return
    if not label or label[0] not in _ALNUM:
        raise _fail(
            "ERR_NGROK_328",
            f"Domain part {label!r} has an invalid first character. Valid domain parts must begin with "
            f"a-z, A-Z, 0-9 or *. Failed to bind the domain {name}.",
        )
    if label[-1] not in _ALNUM:
        raise _fail(
            "ERR_NGROK_329",
            f"Domain part {label!r} has an invalid last character. Valid domains must end with a-z A-Z "
            f"or 0-9. Failed to bind the domain {name}.",
        )
    if len(label) > MAX_LABEL:
        raise _fail(
            "ERR_NGROK_396",
            f"Domain {name} is not a valid DNS name. No domain part may be more than {MAX_LABEL} "
            "characters long.",
        )
    if label[2:4] == "--":
        if not label.startswith("xn--"):
            raise _fail(
                "ERR_NGROK_330",
                "Domain has an invalid character sequence. Valid domains may not contain '--' in "
                "positions 3 and 4 unless the domain has a punycode prefix of 'xn--'. "
                f"Failed to bind the domain {name}.",
            )
        if (why := _punycode_problem(label[4:])) is not None:
            raise _fail(
                "ERR_NGROK_347", f"Domain has invalid punycode: {why}. Failed to bind the domain {name}."
            )


def _punycode_problem(encoded: str) -> str | None:
    """Why the part after ``xn--`` is not an internationalised label, or None when it is one."""
    try:
        decoded = encoded.encode("ascii").decode("punycode")
    except UnicodeError as exc:
        return str(exc)
    if not decoded or decoded.isascii():
        return f"{encoded!r} decodes to no non-ASCII text"
    if not decoded.isprintable() or decoded.encode("punycode").decode("ascii") != encoded:
        return f"{encoded!r} is not a canonical encoding of printable text"
    return None


def validate_domain(name: str) -> str:
    """Return ``name`` normalised (lowercase, no trailing root dot) or raise ``DomainError``.

    Allowed: a-z, 0-9, ``-`` and ``.``; ``*`` only as the whole leftmost label; at least two labels (a
    wildcard needs two below its ``*``); labels of 1..63 characters that start and end with a letter or
    digit; at most 253 characters. Codes follow ngrok: 326 bad character, 355 underscore, 327 ``..``,
    328/329 bad first/last character of a label, 330 ``--`` at positions 3-4 without ``xn--``, 347 bad
    punycode, 396 label too long, 397 name too long, 402/403 misplaced ``*``, 331 one label only, 416 a
    wildcard over a whole top-level domain. Public-suffix checks are left out on purpose: a self-hosted
    edge lives on names such as ``hatchway.localhost``.
    """
    original = name
    name = normalize(name)
    if not name:
        raise _fail("ERR_NGROK_326", "The domain name is empty.")
    if "_" in name:
        raise _fail(
            "ERR_NGROK_355",
            f"Invalid '_' in domain name. Valid domains may not contain underscores. "
            f"Failed to bind the domain {original}.",
        )
    for ch in name:
        if ch not in _LABEL_CHARS and ch not in ".*":
            raise _fail(
                "ERR_NGROK_326",
                f"Invalid character {ch!r} in domain name. Valid domains may contain only a-z, A-Z, 0-9, "
                f". * and - characters. Failed to bind the domain {original}.",
            )
    if ".." in name:
        raise _fail(
            "ERR_NGROK_327",
            "Domain has an invalid character sequence. Valid domains may not contain repeated periods "
            f"'..'. Failed to bind the domain {original}.",
        )
    if len(name) > MAX_NAME:
        raise _fail(
            "ERR_NGROK_397",
            f"Domain {name[:40]}... is not a valid DNS name. Domains may not be more than {MAX_NAME} "
            "characters long.",
        )
    labels = name.split(".")
    for i, label in enumerate(labels):
        _check_label(label, i == 0, name)
    if len(labels) < 2:
        raise _fail(
            "ERR_NGROK_331",
            f"You may not bind the single-label name {name}: a domain needs at least two labels "
            "(like example.com).",
        )
    if labels[0] == "*" and len(labels) < 3:
        raise _fail(
            "ERR_NGROK_416",
            f"You may not use a wildcard for all .{labels[1]} domains. Failed to bind the domain {name}.",
        )
    return name


def is_wildcard(name: str) -> bool:
    """True for ``*.example.com``."""
    return name.startswith("*.")


def wildcard_base(name: str) -> str:
    """``example.com`` for ``*.example.com``; a plain name is returned unchanged."""
    return name[2:] if is_wildcard(name) else name


def is_below(host: str, base: str) -> bool:
    """True when ``host`` is strictly below ``base``, at any depth (``a.b.ex.com`` is below ``ex.com``)."""
    return len(host) > len(base) + 1 and host.endswith(base) and host[-len(base) - 1] == "."


def wildcard_matches(pattern: str, host: str) -> bool:
    """``*.example.com`` matches ``a.example.com`` and ``a.b.example.com``, not ``example.com``.

    A pattern that is not a wildcard matches nothing here (use ``==``). Both sides are compared
    case-insensitively.
    """
    if not is_wildcard(pattern):
        return False
    return is_below(normalize(host), normalize(pattern[2:]))


def most_specific(host: str, candidates: Iterable[str]) -> str | None:
    """The candidate that should serve ``host``: the exact name, else the matching wildcard with the
    longest suffix (``*.a.example.com`` beats ``*.example.com``). None when nothing matches.

    The candidate is returned as given (not normalised), so it can be used as a key.
    """
    host = normalize(host)
    best: str | None = None
    best_len = -1
    for cand in candidates:
        norm = normalize(cand)
        if norm == host:
            return cand
        if wildcard_matches(norm, host) and len(norm) > best_len:
            best, best_len = cand, len(norm)
    return best


def under_base(host: str, base_domain: str) -> bool:
    """True when ``host`` is a subdomain (any depth) of the edge's base domain, not the base itself."""
    return is_below(normalize(host), normalize(base_domain))


def covers(reservation: str, name: str) -> bool:
    """Whether a reservation gives its owner ``name``.

    ``foo.example.com`` covers itself and everything below it (``*.foo.example.com`` included);
    ``*.example.com`` covers itself and everything below ``example.com``, but not ``example.com``.
    """
    reservation, name = normalize(reservation), normalize(name)
    if reservation == name:
        return True
    return is_below(name, wildcard_base(reservation))


def covering_names(name: str) -> list[str]:
    """Every reservation name that would cover ``name``, most specific first.

    For ``a.foo.example.com``: itself, ``*.foo.example.com``, ``foo.example.com``, ``*.example.com``,
    ``example.com``, ``*.com``, ``com``. For ``*.foo.example.com``: itself, ``foo.example.com``,
    ``*.example.com``, ``example.com``, ... A store looks these up by key instead of scanning.
    """
    name = normalize(name)
    base = wildcard_base(name)
    out = [name, base] if is_wildcard(name) else [name]
    labels = base.split(".")
    for i in range(1, len(labels)):
        ancestor = ".".join(labels[i:])
        out += [f"*.{ancestor}", ancestor]
    return out


def route_keys(host: str) -> list[str]:
    """The names an online endpoint could be bound under to serve ``host``, most specific first.

    ``a.b.example.com`` gives ``a.b.example.com``, ``*.b.example.com``, ``*.example.com``, ``*.com``: a
    registry keyed by endpoint name finds the ``most_specific`` match with one dict probe per label.
    """
    host = normalize(host)
    labels = host.split(".")
    return [host, *(f"*.{'.'.join(labels[i:])}" for i in range(1, len(labels)))]


def random_name(base_domain: str, taken: Callable[[str], bool] | None = None, attempts: int = 20) -> str:
    """A fresh readable host under ``base_domain``, like ``herring-sharing-precisely.example.com``.

    Three different words from ``WORDS``. When ``taken(host)`` says a name is in use, another is drawn;
    after half of ``attempts`` a short hex suffix (``-3f9a``) is added to widen the space. Raises
    ``DomainError`` if ``base_domain`` (or the result) is not a valid name, and ``RuntimeError`` if
    every attempt was taken, which means ``taken`` always answers True.
    """
    base = validate_domain(base_domain)
    rng = secrets.SystemRandom()
    for attempt in range(max(attempts, 1)):
        label = "-".join(rng.sample(WORDS, 3))
        if attempt >= attempts // 2:
            label = f"{label}-{secrets.token_hex(2)}"
        host = f"{label}.{base}"
        if taken is None or not taken(host):
            return validate_domain(host)
    raise RuntimeError(f"no free random name under {base} after {attempts} attempts")


def seeded_name(base_domain: str, seed: bytes) -> str:
    """A readable host derived from ``seed`` (the same seed always gives the same name).

    The edge seeds it with an HMAC of the tunnel id, so an agent that re-binds its old tunnel id after a
    reconnect, or after an edge restart, gets its random URL back (the Rust SDKs re-bind with the old id
    and an empty hostname, protocol.md §7).
    """
    base = validate_domain(base_domain)
    n = int.from_bytes(seed[:16], "big")
    words: list[str] = []
    while len(words) < 3:
        n, i = divmod(n, len(WORDS))
        if WORDS[i] not in words:
            words.append(WORDS[i])
        else:
            n += 7  # a repeat: step on (the seed has far more entropy than three words use)
    return validate_domain(f"{'-'.join(words)}.{base}")
