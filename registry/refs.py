"""Image references: parse them by the OCI distribution grammar, place them in a namespace.

The grammar is distribution's ``reference`` package (docker/distribution
``reference/reference.go``, the same one registries enforce)::

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [domain "/"] path-component ["/" path-component]*
    domain           := domain-component ["." domain-component]* [":" port-number]
    path-component   := [a-z0-9]+ (separator [a-z0-9]+)*
    separator        := [_.] | "__" | "-"*
    tag              := [\\w][\\w.-]{0,127}
    digest           := "sha256:" 64 lowercase hex digits  (or "sha512:" 128)

As in docker's normalisation, the first component is a registry host only when it
contains "." or ":" or is "localhost"; otherwise the whole name is the repository and
the site's registry is used. Everything here is a pure function; errors are
:class:`InvalidRequest` (bad text) or :class:`PermissionDenied` (another user's
namespace), each quoting the input and saying what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import ConfigError, InvalidRequest, PermissionDenied

# Every pattern is ASCII-only and used with fullmatch: Python's \w is Unicode and "$"
# matches before a trailing newline, both of which a registry would refuse.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]*)"
_PATH_COMPONENT = re.compile(rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*", re.ASCII)
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?",
    re.ASCII,
)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGESTS = {
    "sha256": re.compile(r"sha256:[a-f0-9]{64}", re.ASCII),
    "sha512": re.compile(r"sha512:[a-f0-9]{128}", re.ASCII),
}
_UNIX_NAME = re.compile(r"[a-z_][a-z0-9_.-]*", re.ASCII)

NAME_TOTAL_LENGTH_MAX = 255
UNIX_NAME_LENGTH_MAX = 32

_TAG_RULE = (
    "a tag is 1 to 128 characters of letters, digits, '_', '.' and '-', "
    "and must not start with '.' or '-'"
)
_PATH_RULE = (
    "each part between '/' must be lowercase letters and digits, optionally joined by "
    "a single '.', a single or double '_', or one or more '-'"
)


@dataclass(frozen=True)
class ImageRef:
    """One image in one registry: ``registry/repository[:tag][@digest]``.

    ``registry`` is a host with optional port ("harbor.example.org",
    "127.0.0.1:5000"); ``repository`` is the path inside it ("alice/torch-env").
    """

    registry: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``repository:tag`` (or ``repository@digest``), without the registry host."""
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/`` in the API: the digest if known, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        if not self.registry:
            return self.name
        return f"{self.registry}/{self.name}"


def host_of(url_or_host: str) -> str:
    """``https://harbor.example.org/`` → ``harbor.example.org``; a bare host is kept."""
    host = url_or_host.strip()
    if "://" in host:
        host = host.split("://", 1)[1]
    return host.rstrip("/")


def parse_reference(text: str, default_registry: str) -> ImageRef:
    """Parse ``[host/]path[:tag][@digest]`` by the OCI distribution reference grammar.

    ``default_registry`` (a host, or a URL whose scheme is dropped) is used when the
    text names no registry host. A missing tag stays ``""``: callers that need one
    (:func:`target_for_user`) say so. Raises :class:`InvalidRequest` naming the part
    that is wrong and quoting ``text``.
    """
    if not text or not text.strip():
        raise InvalidRequest(f"image reference {text!r} is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidRequest(f"image reference {text!r} must not contain spaces")
    rest, digest = _split_digest(text)
    rest, tag = _split_tag(rest, text)
    host, repository = _split_host(rest)
    if host is not None:
        _check_host(host, text)
    _check_repository(repository, text)
    registry = host if host is not None else host_of(default_registry)
    _check_length(f"{registry}/{repository}", text)
    return ImageRef(registry=registry, repository=repository, tag=tag, digest=digest)


def _split_digest(text: str) -> tuple[str, str]:
    if "@" not in text:
        return text, ""
    rest, _, digest = text.partition("@")
    if "@" in digest:
        raise InvalidRequest(f"image reference {text!r} has more than one '@'")
    if not rest:
        raise InvalidRequest(f"image reference {text!r} has a digest but no name")
    _check_digest(digest, text)
    return rest, digest


def _check_digest(digest: str, text: str) -> None:
    algorithm = digest.split(":", 1)[0]
    pattern = _DIGESTS.get(algorithm)
    if pattern is None:
        raise InvalidRequest(
            f"digest {digest!r} is invalid: the algorithm must be "
            f"{' or '.join(sorted(_DIGESTS))} (in {text!r})"
        )
    if not pattern.fullmatch(digest):
        size = 64 if algorithm == "sha256" else 128
        raise InvalidRequest(
            f"digest {digest!r} is invalid: expected '{algorithm}:' followed by {size} "
            f"lowercase hex digits (in {text!r})"
        )


def _split_tag(rest: str, text: str) -> tuple[str, str]:
    # A ':' before the last '/' belongs to a host's port ("127.0.0.1:5000/x").
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon <= last_slash:
        return rest, ""
    name, tag = rest[:colon], rest[colon + 1 :]
    if not tag:
        raise InvalidRequest(f"image reference {text!r} ends with ':' but has no tag")
    _check_tag(tag, text)
    if not name:
        raise InvalidRequest(f"image reference {text!r} has a tag but no name")
    return name, tag


def _check_tag(tag: str, text: str) -> None:
    if not _TAG.fullmatch(tag):
        why = "longer than 128 characters" if len(tag) > 128 else _TAG_RULE
        raise InvalidRequest(f"tag {tag!r} is invalid: {why} (in {text!r})")


def _split_host(rest: str) -> tuple[str | None, str]:
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, remainder
    return None, rest


def _check_length(full_name: str, text: str) -> None:
    # distribution counts the whole name, host included (reference.NameTotalLengthMax).
    if len(full_name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidRequest(
            f"name {full_name!r} is {len(full_name)} characters long; registries accept "
            f"at most {NAME_TOTAL_LENGTH_MAX} (from {text!r})"
        )


def _check_host(host: str, text: str) -> None:
    if not _DOMAIN.fullmatch(host):
        raise InvalidRequest(
            f"registry host {host!r} is invalid: expected a host name or IP address with "
            f"an optional ':port' (in {text!r})"
        )


def _check_repository(repository: str, text: str) -> None:
    if not repository:
        raise InvalidRequest(f"image reference {text!r} has no repository name")
    for component in repository.split("/"):
        if not component:
            raise InvalidRequest(
                f"repository {repository!r} is invalid: it has an empty part "
                f"(a leading, trailing or double '/') (in {text!r})"
            )
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if _PATH_COMPONENT.fullmatch(component.lower()):
            why = "repository names must be lowercase"
        else:
            why = _PATH_RULE
        raise InvalidRequest(
            f"repository {repository!r} is invalid: part {component!r}: {why} (in {text!r})"
        )


def check_repository(repository: str) -> str:
    """Return ``repository`` ("alice/x") if it is a valid repository path, else raise."""
    _check_repository(repository, repository)
    return repository


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is ``sha256:<64 hex>`` or ``sha512:<128 hex>``, else raise."""
    _check_digest(digest, digest)
    return digest


def check_reference(reference: str) -> str:
    """Return ``reference`` if it is a valid tag or digest (what follows /manifests/)."""
    if ":" in reference:
        return check_digest(reference)
    _check_tag(reference, reference)
    return reference


def split_name_tag(text: str) -> tuple[str, str]:
    """``"alice/tools/r-env:2024"`` → ``("alice/tools/r-env", "2024")``.

    An image as the API's URLs name it: a repository path (lowercase components joined
    by '/', so never '.' or '..') and a tag; no registry host, no digest. Raises
    :class:`InvalidRequest` quoting ``text``.
    """
    if "@" in text:
        raise InvalidRequest(f"image {text!r} has a digest; name the image by its tag "
                             "(name:tag)")
    name, colon, tag = text.rpartition(":")
    if not colon or "/" in tag:
        raise InvalidRequest(f"image {text!r} has no tag; name it as name:tag, "
                             "e.g. 'torch-env:v1'")
    host, _, rest = name.partition("/")
    if rest and (":" in host or host == "localhost"):
        raise InvalidRequest(f"image {text!r} names a registry host; leave {host + '/'!r} "
                             f"out: {rest + ':' + tag!r}")
    _check_repository(name, text)
    _check_tag(tag, text)
    _check_length(name, text)
    return name, tag


def check_unix_name(value: str, what: str = "user name") -> str:
    """Return ``value`` if it is a plain Unix user/group name, else raise InvalidRequest."""
    if len(value) > UNIX_NAME_LENGTH_MAX or not _UNIX_NAME.fullmatch(value):
        raise InvalidRequest(
            f"{what} {value!r} is invalid: expected up to {UNIX_NAME_LENGTH_MAX} "
            "characters of lowercase letters, digits, '_', '.' and '-', "
            "starting with a letter or '_'"
        )
    return value


def user_namespace(user: str, namespace_rule: str, group: str = "") -> str:
    """The repository prefix a user may push to: ``namespace_rule`` with names filled in.

    Only ``{user}`` and ``{group}`` are substituted (never ``str.format``, which would
    let a rule reach attributes). Raises :class:`ConfigError` for a rule that needs a
    group when none is given or leaves other braces, :class:`InvalidRequest` when the
    result is not a valid repository path (for example a user name starting with '_').
    """
    check_unix_name(user)
    if "{group}" in namespace_rule:
        if not group:
            raise ConfigError(
                f"registry namespace rule {namespace_rule!r} needs the user's group, "
                f"but none was given for user {user!r}"
            )
        check_unix_name(group, "group name")
    namespace = namespace_rule.replace("{user}", user).replace("{group}", group)
    if "{" in namespace or "}" in namespace:
        raise ConfigError(
            f"registry namespace rule {namespace_rule!r} may contain only {{user}} and "
            "{group} placeholders"
        )
    namespace = namespace.strip("/")
    try:
        _check_repository(namespace, namespace)
    except InvalidRequest as e:
        raise InvalidRequest(
            f"namespace {namespace!r} (rule {namespace_rule!r}, user {user!r}) is not a "
            f"valid repository path: {e.message}"
        ) from e
    return namespace


def target_for_user(
    name_tag: str,
    user: str,
    namespace_rule: str,
    registry_host: str,
    group: str = "",
) -> ImageRef:
    """Where ``user``'s save of ``name_tag`` goes: always inside the user's namespace.

    With rule ``"{user}"``: ``"torch-env:v1"`` → ``<host>/alice/torch-env:v1``;
    ``"alice/torch-env:v1"`` is kept; ``"bob/x:v1"`` raises :class:`PermissionDenied`.
    A missing tag, a digest, or a registry host other than ``registry_host`` raise
    :class:`InvalidRequest`.
    """
    site_host = _site_host(registry_host)
    namespace = user_namespace(user, namespace_rule, group)
    ref = parse_reference(name_tag, site_host)
    if ref.registry.lower() != site_host.lower() and (
        f"{ref.registry}/{ref.repository}".startswith(namespace + "/")
    ):
        # "john.smith/x:v1": docker's rule reads a first part with a '.' as a host, but
        # here it is the user's own namespace on the site registry.
        ref = ImageRef(site_host, f"{ref.registry}/{ref.repository}", ref.tag, ref.digest)
    if ref.registry.lower() != site_host.lower():
        raise InvalidRequest(
            f"image {name_tag!r} names registry {ref.registry!r}, but this site pushes to "
            f"{site_host!r}; leave the host out (e.g. {ref.name!r})"
        )
    if ref.digest:
        raise InvalidRequest(
            f"image {name_tag!r} has a digest; a save target needs a tag such as "
            f"{ref.repository + ':v1'!r}, and the digest is known only after the push"
        )
    if not ref.tag:
        raise InvalidRequest(
            f"image {name_tag!r} has no tag; give one explicitly, e.g. {ref.repository + ':v1'!r}"
        )
    repository = ref.repository
    if not repository.startswith(namespace + "/"):
        if "/" in repository:
            short = repository.rsplit("/", 1)[1]
            raise PermissionDenied(
                f"image {name_tag!r} is outside your namespace {namespace + '/'!r}; "
                f"name it {short + ':' + ref.tag!r} or "
                f"{namespace + '/' + repository + ':' + ref.tag!r}"
            )
        repository = f"{namespace}/{repository}"
    _check_repository(repository, name_tag)
    _check_length(f"{site_host}/{repository}", name_tag)
    return ImageRef(registry=site_host, repository=repository, tag=ref.tag)


def _site_host(value: str) -> str:
    host = host_of(value)
    if not host or not _DOMAIN.fullmatch(host):
        raise ConfigError(f"registry host {value!r} from the site configuration is invalid")
    return host
