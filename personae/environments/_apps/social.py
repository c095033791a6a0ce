"""The social app: a feed of posts with a comment form each (`/social`), and direct
messages (`/social/messages`)."""

from __future__ import annotations

from personae.environments._apps._html import (
    Request,
    Response,
    button,
    choice,
    esc,
    field_of,
    form,
    not_found,
    page,
    redirect,
    text_area,
)


def _users(req: Request) -> list[str]:
    """Everyone the apps know of, the logged-in user first."""
    rows = req.db.execute(
        "SELECT author FROM posts UNION SELECT author FROM comments UNION SELECT sender FROM "
        "messages UNION SELECT recipient FROM messages UNION SELECT owner FROM files"
    ).fetchall()
    return [req.user, *sorted({r[0] for r in rows} - {req.user})]


def feed(req: Request) -> Response:
    new_post = form(
        "/social/posts",
        "New post",
        text_area("post-new-body", "body", "New post"),
        button("post-new-submit", "Post"),
    )
    posts = req.db.execute("SELECT id, author, body FROM posts ORDER BY id DESC").fetchall()
    parts = []
    for pid, author, body in posts:
        comments = req.db.execute(
            "SELECT author, body FROM comments WHERE post = ? ORDER BY id", (pid,)
        ).fetchall()
        said = "".join(f"<li>{esc(a)}: {esc(b)}</li>" for a, b in comments)
        parts.append(
            f'<article aria-label="Post {pid} by {esc(author)}"><h2>{esc(author)}</h2>'
            f"<p>{esc(body)}</p>"
            + (f'<ul aria-label="Comments">{said}</ul>' if comments else "")
            + form(
                f"/social/posts/{pid}/comments",
                f"Comment on post {pid}",
                text_area(f"post-{pid}-comment", "body", "Comment"),
                button(f"post-{pid}-comment-submit", "Comment"),
            )
            + "</article>"
        )
    return page(req, "Social", new_post + ("".join(parts) or "<p>No posts yet.</p>"))


def post(req: Request) -> Response:
    body = field_of(req, "body")
    if body:
        req.db.execute("INSERT INTO posts (author, body) VALUES (?, ?)", (req.user, body))
    return redirect("/social")


def comment(req: Request) -> Response:
    if req.db.execute("SELECT 1 FROM posts WHERE id = ?", (req.args[0],)).fetchone() is None:
        return not_found(req, "post")
    body = field_of(req, "body")
    if body:
        req.db.execute(
            "INSERT INTO comments (post, author, body) VALUES (?, ?, ?)",
            (req.args[0], req.user, body),
        )
    return redirect("/social")


def messages(req: Request) -> Response:
    rows = req.db.execute(
        "SELECT sender, recipient, body FROM messages WHERE sender = ? OR recipient = ? "
        "ORDER BY id",
        (req.user, req.user),
    ).fetchall()
    said = "".join(f"<li>{esc(s)} to {esc(r)}: {esc(b)}</li>" for s, r, b in rows)
    others = [u for u in _users(req) if u != req.user] or [req.user]
    send = form(
        "/social/messages",
        "Send a message",
        choice("message-to", "recipient", "To", others, others[0]),
        text_area("message-body", "body", "Message"),
        button("message-send", "Send"),
    )
    listing = f'<ul aria-label="Messages">{said}</ul>' if rows else "<p>No messages yet.</p>"
    return page(req, "Messages", listing + send)


def send(req: Request) -> Response:
    recipient, body = field_of(req, "recipient", 200), field_of(req, "body")
    if recipient and body:
        req.db.execute(
            "INSERT INTO messages (sender, recipient, body) VALUES (?, ?, ?)",
            (req.user, recipient, body),
        )
    return redirect("/social/messages")


ROUTES = (
    ("GET", r"/social", feed),
    ("POST", r"/social/posts", post),
    ("POST", r"/social/posts/(\d+)/comments", comment),
    ("GET", r"/social/messages", messages),
    ("POST", r"/social/messages", send),
)
