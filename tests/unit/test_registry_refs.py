"""Image reference parsing and per-user targets: pure functions, table-driven."""

from __future__ import annotations

import pytest

from core.errors import ConfigError, InvalidRequest, PermissionDenied
from registry.refs import (
    ImageRef,
    check_digest,
    check_reference,
    check_repository,
    check_unix_name,
    host_of,
    parse_reference,
    split_name_tag,
    target_for_user,
    user_namespace,
)

SITE = "harbor.example.org"
D256 = "sha256:" + "a" * 64
D512 = "sha512:" + "b" * 128


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("torch-env:v1", ImageRef(SITE, "torch-env", "v1")),
        ("torch-env", ImageRef(SITE, "torch-env")),
        ("alice/torch-env:v1", ImageRef(SITE, "alice/torch-env", "v1")),
        ("a/b/c/d:latest", ImageRef(SITE, "a/b/c/d", "latest")),
        ("127.0.0.1:5000/alice/x:v1", ImageRef("127.0.0.1:5000", "alice/x", "v1")),
        ("localhost/x:1", ImageRef("localhost", "x", "1")),
        ("localhost:5000/x", ImageRef("localhost:5000", "x")),
        ("Harbor.Example.org/p/x:T", ImageRef("Harbor.Example.org", "p/x", "T")),
        ("[::1]:5000/x:v1", ImageRef("[::1]:5000", "x", "v1")),
        (f"x@{D256}", ImageRef(SITE, "x", "", D256)),
        (f"x:v1@{D256}", ImageRef(SITE, "x", "v1", D256)),
        (f"x@{D512}", ImageRef(SITE, "x", "", D512)),
        ("p/a.b_c__d-e--f/x:v1", ImageRef(SITE, "p/a.b_c__d-e--f/x", "v1")),
        # docker's rule: a first part with a '.' is a host, even if it looks like a user
        ("john.smith/x:v1", ImageRef("john.smith", "x", "v1")),
        ("x:_under", ImageRef(SITE, "x", "_under")),
        ("x:V1.2-rc_3", ImageRef(SITE, "x", "V1.2-rc_3")),
        ("x:" + "t" * 128, ImageRef(SITE, "x", "t" * 128)),
        # no '.', ':' or "localhost": the first component is a repository part
        ("registry/x:v1", ImageRef(SITE, "registry/x", "v1")),
    ],
)
def test_parse_reference_accepts(text: str, expected: ImageRef) -> None:
    assert parse_reference(text, SITE) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "image reference '' is empty"),
        ("   ", "is empty"),
        (" x:v1", "must not contain spaces"),
        ("x :v1", "must not contain spaces"),
        ("x:v1\n", "must not contain spaces"),
        ("x:v1!", "tag 'v1!' is invalid: a tag is 1 to 128 characters"),
        ("x:.v1", "tag '.v1' is invalid"),
        ("x:-v1", "tag '-v1' is invalid"),
        ("x:" + "t" * 129, "longer than 128 characters"),
        ("x:", "ends with ':' but has no tag"),
        (":v1", "has a tag but no name"),
        ("x:tàg", "tag 'tàg' is invalid"),
        ("Alice/x:v1", "part 'Alice': repository names must be lowercase"),
        ("alice/X", "part 'X': repository names must be lowercase"),
        ("alice/-x:v1", "part '-x'"),
        ("alice/x-:v1", "part 'x-'"),
        ("alice/x..y:v1", "part 'x..y'"),
        ("alice/x___y:v1", "part 'x___y'"),
        ("alice/x._y:v1", "part 'x._y'"),
        ("alice/../bob/x:v1", "part '..'"),
        ("alice//x:v1", "empty part"),
        ("/x:v1", "empty part"),
        ("alice/:v1", "empty part"),
        ("alice/x$y:v1", "part 'x$y'"),
        ("héllo:v1", "part 'héllo'"),
        ("bad_host.org/x:v1", "registry host 'bad_host.org' is invalid"),
        ("-h.org/x", "registry host '-h.org' is invalid"),
        ("h.org:port/x", "registry host 'h.org:port' is invalid"),
        ("localhost/", "has no repository name"),
        ("x@sha256:abc", "digest 'sha256:abc' is invalid: expected 'sha256:' followed by 64"),
        ("x@sha256:" + "A" * 64, "lowercase hex"),
        ("x@md5:" + "a" * 32, "the algorithm must be sha256 or sha512"),
        (f"x@{D256}@{D256}", "more than one '@'"),
        (f"@{D256}", "has a digest but no name"),
        ("x/" * 130 + "x:v1", "registries accept at most 255"),
    ],
)
def test_parse_reference_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_reference(text, SITE)
    assert message in err.value.message
    # the user's text is quoted so they see what was refused
    if text.strip() and len(text) < 100:
        assert repr(text) in err.value.message or repr(text.strip()) in err.value.message


def test_default_registry_may_be_a_url() -> None:
    assert parse_reference("x:v1", "https://h.example.org/").registry == "h.example.org"
    assert host_of("http://127.0.0.1:5000") == "127.0.0.1:5000"
    assert host_of("h.example.org") == "h.example.org"


@pytest.mark.parametrize(
    ("ref", "text", "name", "reference"),
    [
        (ImageRef("h:5000", "a/x", "v1"), "h:5000/a/x:v1", "a/x:v1", "v1"),
        (ImageRef("h", "a/x", "", D256), f"h/a/x@{D256}", f"a/x@{D256}", D256),
        (ImageRef("h", "a/x", "v1", D256), f"h/a/x:v1@{D256}", f"a/x:v1@{D256}", D256),
        (ImageRef("", "a/x", "v1"), "a/x:v1", "a/x:v1", "v1"),
    ],
)
def test_image_ref_text(ref: ImageRef, text: str, name: str, reference: str) -> None:
    assert str(ref) == text
    assert ref.name == name
    assert ref.reference == reference


def test_image_ref_round_trips_and_is_frozen() -> None:
    ref = parse_reference("127.0.0.1:5000/alice/x:v1", SITE)
    assert parse_reference(str(ref), SITE) == ref
    with pytest.raises(AttributeError):
        ref.tag = "v2"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name_tag", "user", "rule", "group", "expected"),
    [
        ("torch-env:v1", "alice", "{user}", "", "alice/torch-env:v1"),
        ("alice/torch-env:v1", "alice", "{user}", "", "alice/torch-env:v1"),
        ("alice/tools/x:v1", "alice", "{user}", "", "alice/tools/x:v1"),
        ("alice:v1", "alice", "{user}", "", "alice/alice:v1"),
        ("x:v1", "alice", "u-{user}", "", "u-alice/x:v1"),
        ("u-alice/x:v1", "alice", "u-{user}", "", "u-alice/x:v1"),
        ("x:v1", "alice", "sif/{user}", "", "sif/alice/x:v1"),
        ("sif/alice/x:v1", "alice", "sif/{user}", "", "sif/alice/x:v1"),
        ("x:v1", "alice", "{group}/{user}", "physics", "physics/alice/x:v1"),
        ("x:v1", "alice", "{group}", "physics", "physics/x:v1"),
        ("x:v1", "a.b-c", "{user}", "", "a.b-c/x:v1"),
        # the grammar reads "john.smith" as a host; as a save target it is the namespace
        ("john.smith/x:v1", "john.smith", "{user}", "", "john.smith/x:v1"),
        (f"{SITE}/x:v1", "alice", "{user}", "", "alice/x:v1"),
        ("HARBOR.example.org/alice/x:v1", "alice", "{user}", "", "alice/x:v1"),
    ],
)
def test_target_for_user(name_tag: str, user: str, rule: str, group: str, expected: str) -> None:
    ref = target_for_user(name_tag, user, rule, SITE, group=group)
    assert ref.name == expected
    assert ref.registry == SITE
    assert ref.digest == ""
    assert str(ref) == f"{SITE}/{expected}"


def test_target_for_user_accepts_url_as_host() -> None:
    ref = target_for_user("x:v1", "alice", "{user}", "http://127.0.0.1:5000")
    assert str(ref) == "127.0.0.1:5000/alice/x:v1"


@pytest.mark.parametrize(
    ("name_tag", "user", "rule", "message"),
    [
        ("bob/x:v1", "alice", "{user}", "outside your namespace 'alice/'"),
        ("alice-evil/x:v1", "alice", "{user}", "outside your namespace"),
        ("alicex/y:v1", "alice", "{user}", "outside your namespace"),
        ("tools/x:v1", "alice", "{user}", "name it 'x:v1' or 'alice/tools/x:v1'"),
        ("alice/x:v1", "alice", "u-{user}", "outside your namespace 'u-alice/'"),
        ("sif/bob/x:v1", "alice", "sif/{user}", "outside your namespace 'sif/alice/'"),
    ],
)
def test_target_for_user_other_namespace(name_tag: str, user: str, rule: str, message: str) -> None:
    with pytest.raises(PermissionDenied) as err:
        target_for_user(name_tag, user, rule, SITE)
    assert message in err.value.message
    assert repr(name_tag) in err.value.message


@pytest.mark.parametrize(
    ("name_tag", "user", "message"),
    [
        ("x", "alice", "has no tag; give one explicitly, e.g. 'x:v1'"),
        ("alice/x", "alice", "has no tag"),
        (f"x@{D256}", "alice", "has a digest"),
        (f"x:v1@{D256}", "alice", "has a digest"),
        ("other.org/alice/x:v1", "alice", "names registry 'other.org'"),
        ("harbor.example.org:443/alice/x:v1", "alice", "names registry"),
        ("x:v1!", "alice", "tag 'v1!' is invalid"),
        ("X:v1", "alice", "must be lowercase"),
        ("x:v1", "Alice", "user name 'Alice' is invalid"),
        ("x:v1", "", "user name '' is invalid"),
        ("x:v1", "al ice", "user name 'al ice' is invalid"),
        ("x:v1", "alice/bob", "user name 'alice/bob' is invalid"),
        ("x:v1", "9lives", "user name '9lives' is invalid"),
        ("x:v1", "a" * 33, "is invalid"),
        ("x:v1", "alice\n", "is invalid"),
        # a valid Unix name that is not a valid repository path component
        ("x:v1", "_svc", "namespace '_svc'"),
        ("x:v1", "a..b", "namespace 'a..b'"),
        ("x" * 250 + ":v1", "alice", "registries accept at most 255"),
    ],
)
def test_target_for_user_invalid(name_tag: str, user: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        target_for_user(name_tag, user, "{user}", SITE)
    assert message in err.value.message


@pytest.mark.parametrize(
    ("rule", "group", "error", "message"),
    [
        ("{group}/{user}", "", ConfigError, "needs the user's group"),
        ("{user}/{other}", "", ConfigError, "only {user} and {group}"),
        ("{user.__class__}", "", ConfigError, "only {user} and {group}"),
        ("{group}", "Bad Group", InvalidRequest, "group name 'Bad Group' is invalid"),
        ("Proj/{user}", "", InvalidRequest, "must be lowercase"),
    ],
)
def test_namespace_rule_errors(rule: str, group: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("{", r"\{").replace("}", r"\}")):
        user_namespace("alice", rule, group)


def test_site_host_must_be_valid() -> None:
    with pytest.raises(ConfigError, match="from the site configuration is invalid"):
        target_for_user("x:v1", "alice", "{user}", "http://bad host")


@pytest.mark.parametrize("name", ["alice", "_svc", "a.b-c_d", "u1", "a" * 32])
def test_unix_names_accepted(name: str) -> None:
    assert check_unix_name(name) == name


@pytest.mark.parametrize("value", ["v1", "latest", D256, D512])
def test_check_reference_accepts(value: str) -> None:
    assert check_reference(value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("v1/x", "tag 'v1/x' is invalid"),
        ("", "tag '' is invalid"),
        ("sha256:zz", "digest 'sha256:zz' is invalid"),
        ("md5:" + "a" * 32, "algorithm must be"),
    ],
)
def test_check_reference_rejects(value: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_reference(value)


def test_check_repository_and_digest() -> None:
    assert check_repository("alice/x") == "alice/x"
    assert check_digest(D256) == D256
    with pytest.raises(InvalidRequest, match="part '..'"):
        check_repository("alice/../x")
    with pytest.raises(InvalidRequest, match="digest 'v1' is invalid"):
        check_digest("v1")


@pytest.mark.parametrize(("text", "expected"), [
    ("torch-env:v1", ("torch-env", "v1")),
    ("alice/tools/r-env:2024", ("alice/tools/r-env", "2024")),
    ("john.smith/a__b/c--d:V1.0_rc-2", ("john.smith/a__b/c--d", "V1.0_rc-2")),
])
def test_split_name_tag_accepts(text: str, expected: tuple[str, str]) -> None:
    assert split_name_tag(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("alice/zzz/../real:tag", "part '..'"),
    ("alice/./x:v1", "part '.'"),
    ("../x:v1", "part '..'"),
    ("alice/x/..:v1", "part '..'"),
    ("alice//x:v1", "empty part"),
    ("/x:v1", "empty part"),
    ("Alice/x:v1", "must be lowercase"),
    ("alice/x", "has no tag"),
    ("alice/x:", "tag '' is invalid"),
    ("alice/x:.v1", "tag '.v1' is invalid"),
    ("alice/x:v1\n", "is invalid"),
    ("alice/x:v1/../y", "has no tag"),
    ("alice/x@" + D256, "has a digest"),
    ("127.0.0.1:5000/alice/x:v1", "leave '127.0.0.1:5000/' out"),
    ("localhost/alice/x:v1", "leave 'localhost/' out"),
    (":v1", "no repository name"),
    ("a/" * 130 + "x:v1", "at most 255"),
])
def test_split_name_tag_rejects(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        split_name_tag(text)
