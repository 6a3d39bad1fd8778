"""One seeded draw of items for the evaluation and the trainer (medqa_bench.data.items, issue 33 item 5): the committed
runs' items are what it selects, and its draws are those the runner's ``select_items`` / ``select_item_sets`` and the
trainer's ``limit_examples`` made before they were one function (run folders, cache keys and adapter manifests
record them)."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import pytest

from medqa_bench.data.items import select_item_sets, select_items

REPORTS = Path(__file__).resolve().parents[1] / "reports"

# (split size, limit, seed) -> positions drawn by the runner's select_items and the trainer's limit_examples before
# they were folded into one function (computed with their code at 3406fd6)
RECORDED = {
    (8, 3, 0): [3, 6, 7],
    (20, 5, 0): [1, 8, 12, 13, 15],
    (20, 5, 42): [0, 3, 7, 8, 16],
    (266, 10, 0): [20, 132, 155, 183, 197, 207, 215, 244, 248, 261],
    (266, 20, 7): [19, 24, 29, 30, 35, 37, 44, 46, 48, 63, 77, 109, 123, 165, 187, 202, 214, 217, 222, 259],
    (267, 20, 1): [1, 14, 32, 48, 52, 60, 68, 107, 117, 130, 136, 162, 194, 199, 221, 228, 230, 241, 249, 253],
    (2136, 30, 42): [26, 102, 108, 122, 130, 356, 383, 418, 419, 456, 571, 636, 653, 814, 881, 895, 902, 914, 952, 1003,
                     1126, 1138, 1139, 1378, 1393, 1718, 1728, 1731, 1839, 2069],
}
# (split size, limit, nll_limit, seed) -> (positions, generated) of the runner's select_item_sets at 3406fd6
_F, _T = False, True
RECORDED_SETS = {
    (8, 2, 4, 0): ([3, 5, 6, 7], [_F, _F, _T, _T]),
    (12, 4, 4, 3): ([2, 3, 8, 9], [_T, _T, _T, _T]),
    (20, 3, 8, 0): ([0, 1, 5, 9, 12, 13, 15, 16], [_F, _T, _F, _F, _T, _T, _F, _F]),
    (20, 3, 0, 5): (list(range(20)), [_F] * 8 + [_T, _F, _F, _T] + [_F] * 7 + [_T]),
    (100, 5, 12, 0): ([5, 6, 33, 35, 49, 52, 53, 55, 57, 66, 69, 97], [_T, _F, _T, _F, _T, _F, _T, _F, _F, _F, _F, _T]),
}


def test_the_committed_sample_is_what_the_draw_selects():
    folder = REPORTS / "headline-other-types"
    spec = json.loads((folder / "results.json").read_text(encoding="utf-8"))["spec"]
    with lzma.open(folder / "samples.jsonl.xz", "rt", encoding="utf-8") as fh:
        recorded = [json.loads(line)["id"] for line in fh if line.strip()]
    from medqa_bench.data.dataset import DataSpec, load_dataset

    pool = load_dataset(DataSpec.from_dict(spec["data"])).split(spec["split"])
    assert len(recorded) == spec["limit"] == 200 < len(pool)
    assert [e.id for e in select_items(pool, spec["limit"], spec["sample_seed"])] == recorded
    items, generated = select_item_sets(pool, spec["limit"], spec["limit"], spec["sample_seed"])
    assert [e.id for e in items] == recorded and all(generated)


@pytest.mark.parametrize("key", sorted(RECORDED))
def test_the_draw_is_the_one_runs_and_adapters_recorded(key):
    from trainers.qlora import limit_examples

    n, limit, seed = key
    assert limit_examples is select_items  # the trainer draws its examples as the evaluation draws its items
    assert select_items(list(range(n)), limit, seed) == RECORDED[key]
    assert select_items(list(range(n)), None, seed) == select_items(list(range(n)), 0, seed) == list(range(n))


@pytest.mark.parametrize("key", sorted(RECORDED_SETS))
def test_the_nll_item_sets_are_the_ones_runs_recorded(key):
    n, limit, nll_limit, seed = key
    examples = [object() for _ in range(n)]
    items, generated = select_item_sets(examples, limit, nll_limit, seed)
    assert ([examples.index(e) for e in items], generated) == RECORDED_SETS[key]
