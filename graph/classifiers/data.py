"""Reading labelled posts from JSONL (raw posts or ``miko-stream process`` events) and splitting them.

Events carry no label: :func:`read_labels` reads one per post id from another file (e.g. the dataset the posts
came from) and :func:`read_posts` joins them by id, refusing posts the labels file does not cover.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from graph.classifiers.inputs import LabelledPost


class DataError(ValueError):
    """An input file the student cannot use; the message says which line and why."""


def read_posts(
    path: Path,
    *,
    require_labels: bool = False,
    limit: int | None = None,
    labels: Mapping[str, int] | None = None,
) -> list[LabelledPost]:
    """Posts from a JSONL file: ``id``/``post_id``, ``text``, ``caption``, ``intentions``, ``label``, ``image``.

    With ``labels`` (see :func:`read_labels`), each post's label is looked up by id; a post without one, or
    whose own ``label`` disagrees, is a :class:`DataError`.
    """
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    posts: list[LabelledPost] = []
    unlabelled: list[str] = []
    for where, row in _json_rows(path):
        post = _as_post(row, where)
        if labels is not None:
            post = _joined(post, labels, where, unlabelled)
        elif require_labels and post.label is None:
            raise DataError(f"{where}: no `label` (0 or 1): training and evaluation need labelled posts")
        posts.append(post)
        if limit is not None and len(posts) >= limit:
            break
    if unlabelled:
        raise DataError(
            f"{path}: {len(unlabelled)} posts have no label in the labels file (first: {unlabelled[0]}); "
            "give a labels file that covers every post id"
        )
    if not posts:
        raise DataError(f"{path}: no posts")
    return posts


def read_labels(path: Path) -> dict[str, int]:
    """``{post id: label}`` from JSONL rows with ``id`` (or ``post_id``) and ``label`` 0/1, e.g. the source dataset.

    Rows without a label are skipped (they label nothing); an id labelled twice differently is an error.
    """
    if not path.is_file():
        raise DataError(f"{path}: no such file (labels)")
    labels: dict[str, int] = {}
    for where, row in _json_rows(path):
        post = _as_post(row, where)
        if post.label is None:
            continue
        if labels.setdefault(post.id, post.label) != post.label:
            raise DataError(f"{where}: post id {post.id} is labelled both 0 and 1")
    if not labels:
        raise DataError(f"{path}: no labelled rows (`id` and `label` 0 or 1)")
    return labels


def _joined(post: LabelledPost, labels: Mapping[str, int], where: str, unlabelled: list[str]) -> LabelledPost:
    label = labels.get(post.id)
    if label is None:
        unlabelled.append(f"{where} id {post.id}")
        return post
    if post.label is not None and post.label != label:
        raise DataError(f"{where}: post id {post.id} has label {post.label} but the labels file says {label}")
    return replace(post, label=label)


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """``(path:line, parsed JSON)`` for each non-blank line; a line that is not JSON is a :class:`DataError`."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not JSON ({error.msg})") from error
            yield where, row


def _as_post(row: Any, where: str) -> LabelledPost:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object")
    post_id = row.get("id", row.get("post_id"))
    if post_id is None:
        raise DataError(f"{where}: no `id` (or `post_id`)")
    label = row.get("label")
    if label is not None and label not in (0, 1, True, False):
        raise DataError(f"{where}: `label` must be 0 or 1, got {label!r}")
    intentions = tuple(
        (str(item.get("relation", "")), str(item.get("text", "")))
        for item in row.get("intentions") or []
        if isinstance(item, dict) and item.get("text") and not item.get("parse_failed")
    )
    return LabelledPost(
        id=str(post_id),
        text=str(row.get("text") or ""),
        caption=row.get("caption") or None,
        intentions=intentions,
        label=None if label is None else int(label),
        image_path=_image_path(row.get("image"), where),
    )


def _image_path(image: Any, where: str) -> str | None:
    if image is None or image == "":
        return None
    if isinstance(image, str):
        return image
    if isinstance(image, dict) and image.get("path"):
        return str(image["path"])
    raise DataError(f"{where}: only local image paths can feed an image encoder (`image` or `image.path`)")


def split_posts(
    posts: Sequence[LabelledPost], fraction: float, *, salt: str = "eval"
) -> tuple[list[LabelledPost], list[LabelledPost]]:
    """(rest, held-out): a stratified ``fraction`` of each label, chosen by a hash of the id, so it never moves."""
    if not 0 < fraction < 1:
        raise DataError(f"split fraction must be between 0 and 1, got {fraction}")

    def rank(post: LabelledPost) -> str:
        return hashlib.blake2b(f"{salt}\x1f{post.id}".encode(), digest_size=8).hexdigest()

    held: set[str] = set()
    for label in sorted({post.label for post in posts}, key=str):
        group = sorted((post for post in posts if post.label == label), key=rank)
        held.update(post.id for post in group[: max(1, round(fraction * len(group)))] if len(group) > 1)
    return [post for post in posts if post.id not in held], [post for post in posts if post.id in held]


def write_posts(posts: Sequence[LabelledPost], path: Path) -> None:
    """JSONL in the shape :func:`read_posts` reads (for split files)."""
    with path.open("w", encoding="utf-8") as out:
        for post in posts:
            row: dict[str, Any] = {"id": post.id, "text": post.text, "label": post.label}
            if post.caption:
                row["caption"] = post.caption
            if post.intentions:
                row["intentions"] = [{"relation": r, "text": t} for r, t in post.intentions]
            if post.image_path:
                row["image"] = {"path": post.image_path}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
