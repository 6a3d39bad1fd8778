"""``medqa-bench chat``: a local web app that asks every chosen system the same question, side by side.

:class:`~medqa_bench.chat.session.ChatSession` holds the models and the conversation and knows nothing of the web
(it is what the tests and other front ends drive); :func:`~medqa_bench.chat.app.build_app` is the Gradio page over it;
:func:`launch` starts the server, on 127.0.0.1 unless told otherwise. Gradio is an optional extra
(``pip install 'medqa-bench[chat]'``).
"""

from __future__ import annotations

from .session import ChatOptions, ChatSession, ChatTurn, export_records

__all__ = ["ChatOptions", "ChatSession", "ChatTurn", "export_records", "launch"]


def launch(options: ChatOptions, *, host: str = "127.0.0.1", port: int = 7860, progress: bool = True) -> None:
    """Load the models (once), build the page and serve it until interrupted."""
    from .app import build_app, serve

    session = ChatSession(options, progress=progress)
    serve(build_app(session), host=host, port=port)
