"""The README cannot drift: its Python blocks run, its command lines parse, and every flag of the CLI is documented."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _commands() -> list[str]:
    """Every ``medqa-bench ...`` command line of the bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line.startswith("medqa-bench ") or " -m medqa_bench.cli " in line:
                out.append(line[line.index("medqa") :])
    return out


def test_every_command_line_parses():
    from medqa_bench.cli import build_parser

    commands = _commands()
    assert len(commands) >= 8
    parser = build_parser()
    for line in commands:
        argv = shlex.split(line)[1:]
        if argv and argv[0] == "medqa_bench.cli":
            argv = argv[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # argparse exits on an unknown flag or a bad value
            raise AssertionError(f"README command does not parse: {line}") from exc


def test_every_flag_is_documented():
    from medqa_bench.cli import build_parser

    text = README.read_text(encoding="utf-8")
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = []
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help" and flag not in text:
                    missing.append(f"{name} {flag}")
    assert not missing, f"flags not in the README: {missing}"


@pytest.mark.slow
def test_python_blocks_run(tmp_path, monkeypatch):
    """The API example runs as written (a 3-item run of the default model on the CPU), and the plugin example
    defines a metric that scores."""
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("python")
    assert len(blocks) >= 2
    for block in blocks:
        namespace: dict = {"__name__": "readme"}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
        if "METRICS" in namespace:
            [metric] = namespace["METRICS"]
            assert list(metric.compute(predictions=["See a doctor."], references=["x"])) == [1.0]
        if "res" in namespace:
            res = namespace["res"]
            assert (tmp_path / "reports" / "api-demo" / "results.json").exists()
            assert res.results["verdict"]["lines"] and "baseline" in res.systems and "qlora" in res.systems
            # rescoring added fuzzy and kept the run's metrics; the other analysis went to its own folder
            assert list(res.results["metrics"]) == ["loss", "rougeL", "token_f1", "fuzzy"]
            other = (tmp_path / "reports" / "api-demo-rougeL" / "results.json").read_text()
            assert '"similarity_metric": "rougeL"' in other
            assert "\n" not in repr(res) and len(repr(res)) < 300
            deltas = res.table(deltas=True)
            row = deltas[(deltas.system == "qlora") & (deltas.metric == "rougeL")].iloc[0]
            assert row.against == "baseline" and 0 <= row.p_holm <= 1 and row.delta_ci_low <= row.delta <= row.delta_ci_high
