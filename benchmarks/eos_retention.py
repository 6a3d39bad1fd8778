"""How many training examples keep their EOS at a given ``data.max_length``: the share of (prompt + answer + EOS)
sequences, tokenised as the trainer tokenises them (trainers.qlora.sft_records: TRL tokenises the prompt with
special tokens and appends EOS to the completion), that fit in max_length tokens. An example cut before its EOS
teaches the model to go on, never to stop.

    python benchmarks/eos_retention.py                                 # symptoms, both formats, 512 and 1024
    python benchmarks/eos_retention.py --qtype all --split-strategy grouped-by-qtype
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qtype", default="symptoms")
    ap.add_argument("--split-strategy", default="grouped")
    ap.add_argument("--max-length", default="512,1024")
    args = ap.parse_args()

    from medqa_bench.data.dataset import DataSpec, SplitOptions, load_dataset
    from medqa_bench.inference.models import load_tokenizer, resolve_model
    from trainers.qlora import sft_records

    tokenizer = load_tokenizer(resolve_model())
    train = load_dataset(DataSpec(qtype=args.qtype, split=SplitOptions(strategy=args.split_strategy))).split("train")
    print(f"{len(train)} training items ({args.qtype}, {args.split_strategy})")
    print("| format | " + " | ".join(f"max_length {n}" for n in args.max_length.split(",")) + " |")
    print("|---|" + "---|" * len(args.max_length.split(",")))
    for fmt in ("reference", "chat"):
        rows = sft_records(train, fmt, tokenizer)
        lengths = [len(tokenizer(r["prompt"])["input_ids"])
                   + len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) + 1 for r in rows]
        cells = [f"{sum(x <= int(n) for x in lengths) / len(lengths):.1%}" for n in args.max_length.split(",")]
        print(f"| {fmt} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
