"""One reader of a file that holds one JSON object (medqa_bench.storage.jsonl.read_json_object): adapter metadata and a run
folder's results.json refuse damage the same way, each with its own error type and way out."""

from __future__ import annotations

import pytest

from medqa_bench.errors import AdapterError, RunError
from medqa_bench.storage.jsonl import read_json_object
from medqa_bench.inference.models import read_adapter
from medqa_bench.storage.run_folder import read_results_file


def test_damaged_json_objects_are_refused_with_the_callers_error(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"schema_version": "2.1", "x": [1]}', encoding="utf-8")
    assert read_json_object(good, RunError) == {"schema_version": "2.1", "x": [1]}

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA",', encoding="utf-8")
    with pytest.raises(AdapterError, match=r"^adapter 'ft': .*adapter_config.json: not valid JSON \(.*\); the folder "
                                           r"is damaged$"):
        read_adapter("ft", adapter)
    (adapter / "adapter_config.json").write_bytes(b'{"peft_type": "\xff"}')
    with pytest.raises(AdapterError, match="adapter_config.json: not valid JSON .*utf-8"):
        read_adapter("ft", adapter)

    results = tmp_path / "results.json"
    results.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(RunError, match=r"results.json: holds a JSON list, not an object; re-run the evaluation"):
        read_results_file(results)
    results.write_text("{", encoding="utf-8")
    with pytest.raises(RunError, match=r"results.json: not valid JSON \(.*\); re-run the evaluation to rewrite it$"):
        read_results_file(results)
    results.write_text('{"schema_version": "1.0"}', encoding="utf-8")  # an object: the schema check comes next
    with pytest.raises(RunError, match="schema_version '1.0'"):
        read_results_file(results)
