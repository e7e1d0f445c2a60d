"""``/api/v1/images``: the caller's images in the registry (LIST) and deleting one (DEL).

An image in a URL is ``name:tag`` by the OCI grammar (:func:`split_name_tag`), checked
before the catalog sees it: a client or proxy that resolves ``..`` in a path would turn
``alice/x/../y:v1`` into another image, so any such name is refused, never interpreted.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from api.web.auth import Principal
from api.web.state import principal, state
from core.errors import NotFound, PermissionDenied
from registry.catalog import ImageInfo
from registry.refs import check_unix_name, split_name_tag

bp = Blueprint("images", __name__, url_prefix="/api/v1")


@bp.get("/images")
def list_images() -> Response:
    """LIST: the caller's images (an admin may add ``?user=NAME``)."""
    owner = _owner(principal())
    found = state().site.images.list(owner)
    return jsonify({"user": owner, "images": [image_dict(i) for i in found]})


@bp.delete("/images/<path:name_tag>")
def delete_image(name_tag: str) -> Response:
    """DEL: delete one of the caller's images, ``name:tag`` (name may contain '/')."""
    owner = _owner(principal())
    split_name_tag(name_tag)  # 400 for '.', '..', empty parts, a host or a digest
    try:
        digest = state().site.images.delete(owner, name_tag)
    except PermissionDenied as e:
        # Another user's image is "not found", as their jobs are: nothing leaks.
        raise NotFound(f"image {name_tag!r} does not exist in your namespace") from e
    return jsonify({"image": name_tag, "digest": digest, "deleted": True})


def image_dict(image: ImageInfo) -> dict[str, object]:
    """An image as the API shows it, with the command that pulls it."""
    data = image.to_dict()
    if image.format == "sif":
        data["pull_command"] = f"apptainer pull oras://{image.reference}"
    else:
        data["pull_command"] = f"podman pull {image.reference}"
    return data


def _owner(caller: Principal) -> str:
    owner = request.args.get("user") or caller.user
    if owner != caller.user:
        if not caller.admin:
            raise PermissionDenied("only an imgsave admin may see another user's images")
        check_unix_name(owner)
    return owner
