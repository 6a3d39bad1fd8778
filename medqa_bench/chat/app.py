"""The Gradio page of ``medqa-bench chat``: a question, one answer column per chosen system, passages, marks, export.

Every model output, passage and status line is shown in a read-only text box, which displays its value as text:
nothing a model writes is ever rendered as HTML or Markdown. The page loads no web font (system fonts only), so it
works offline. Element ids (``question``, ``ask``, ``answer-<n>``, ``mark-<n>``, ``passages``, ``reference``,
``export``, ``status``; ``n`` is the system's position) are what the browser test drives.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import MedQABenchError, SpecError
from .session import MARKS, ChatSession

UNMARKED = "unmarked"
INTRO = ("Ask a question; each chosen system answers in its own prompt format, one after another, as the run "
         "evaluates it. Mark answers **correct** or **wrong**, add your own reference answer if you like, then export: "
         "the file is evaluation data for `medqa-bench run --data FILE --split all`.")


def _gradio():
    try:
        import gradio as gr
    except ImportError:
        raise SpecError("medqa-bench chat needs Gradio: pip install 'medqa-bench[chat]' (or pip install gradio)") from None
    return gr


def passages_text(passages: list[dict[str, Any]] | None) -> str:
    """The passages as the page shows them: ``[n] training item <id> (score)`` and the text, best first."""
    if not passages:
        return ""
    return "\n\n".join(f"[{n}] training item {p['id']} (score {p['score']:.3f})\n{p['text']}"
                       for n, p in enumerate(passages, 1))


def build_app(session: ChatSession):
    """The page (a ``gradio.Blocks``) over a loaded :class:`ChatSession`."""
    gr = _gradio()
    names = session.names
    with gr.Blocks(title="medqa-bench chat", analytics_enabled=False) as app:
        gr.Markdown("## medqa-bench chat\n" + INTRO)
        turns = gr.State([])
        with gr.Row():
            question = gr.Textbox(label="Question", lines=2, scale=4, elem_id="question")
            qtype = gr.Textbox(label="Question type", value="symptoms", scale=1, elem_id="qtype")
        chosen = gr.CheckboxGroup(choices=names, value=names, label="Systems", elem_id="systems")
        ask = gr.Button("Ask", variant="primary", elem_id="ask")
        boxes, marks = [], []
        with gr.Row():
            for i, name in enumerate(names):
                info = session.describe(name)
                label = f"{name} · {info['prompt_format']} format" + (
                    f" · RAG {info['retrieval']}" if info["retrieval"] else "")
                with gr.Column(min_width=240):
                    boxes.append(gr.Textbox(label=label, lines=10, max_lines=30, interactive=False,
                                            elem_id=f"answer-{i}"))
                    marks.append(gr.Radio([UNMARKED, *MARKS], value=UNMARKED, label=f"mark {name}",
                                          elem_id=f"mark-{i}"))
        passages = gr.Textbox(label="Retrieved passages (training split)", lines=8, max_lines=30, interactive=False,
                              visible=session.rag is not None, elem_id="passages")
        reference = gr.Textbox(label="Your reference answer (optional; becomes the item's first reference)", lines=3,
                               elem_id="reference")
        with gr.Row():
            export = gr.Button("Export conversation (JSONL)", elem_id="export")
        status = gr.Textbox(label="Status", interactive=False, elem_id="status")
        exported = gr.File(label="Exported file", interactive=False, elem_id="export-file")

        def answer(q, qt, picked, history):
            picked = [n for n in names if n in (picked or [])]
            empty = [gr.update()] * (len(boxes) + len(marks)) + [gr.update(), gr.update(), history]
            try:
                turn = session.new_turn(q, qt, picked)
            except MedQABenchError as exc:
                yield empty + [str(exc)]
                return
            history = history + [turn]
            texts = {n: "" for n in names}
            fixed = [gr.update(value=UNMARKED)] * len(marks) + [passages_text(turn.passages), "", history]
            yield [texts[n] for n in names] + fixed + [f"answering: {', '.join(picked) or 'no system chosen'}"]
            for n in picked:
                for text in session.stream(n, turn):
                    texts[n] = text
                    yield [texts[m] for m in names] + fixed + [f"answering: {n}"]
            yield [texts[n] for n in names] + fixed + [
                f"answered by {len(picked)} system(s); mark the answers, then export"]

        ask.click(answer, inputs=[question, qtype, chosen, turns],
                  outputs=[*boxes, *marks, passages, reference, turns, status], api_name="ask")

        for name, radio in zip(names, marks):
            def mark(value, history, name=name):
                if history:
                    if value in MARKS:
                        history[-1].marks[name] = value
                    else:
                        history[-1].marks.pop(name, None)
                return history

            radio.input(mark, inputs=[radio, turns], outputs=[turns], api_name=False)

        def own_reference(text, history):
            if history:
                history[-1].reference = text or ""
            return history

        # .change, not .input: the reset to "" by a new question lands on the new turn, whose reference is "" anyway
        reference.change(own_reference, inputs=[reference, turns], outputs=[turns], api_name=False)

        def write(history):
            if not history:
                return "nothing to export yet: ask a question first", None
            path, n = session.export(history)
            left = len(history) - n
            note = f" ({left} question(s) without a reference left out)" if left else ""
            return f"wrote {n} item(s) to {path}{note}", str(path) if n else None

        export.click(write, inputs=[turns], outputs=[status, exported], api_name="export")
    return app


def serve(app, *, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve ``app`` on ``host:port`` (127.0.0.1: this machine only) until interrupted; no analytics, no web fonts."""
    gr = _gradio()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
    app.queue(default_concurrency_limit=1).launch(server_name=host, server_port=port, ssr_mode=False, theme=theme,
                                                  show_error=True, share=False, inbrowser=False)
