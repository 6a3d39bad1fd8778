"""Storage: what a run keeps on disk, written so that a failure never leaves a half-written file.

- :mod:`~medqa_bench.storage.atomic`: files and folders written whole, or not at all;
- :mod:`~medqa_bench.storage.run_folder`: a run folder's lock, its replaceability and its staged rewrite;
- :mod:`~medqa_bench.storage.cache`: the SQLite inference cache, content-addressed;
- :mod:`~medqa_bench.storage.fingerprint`, :mod:`~medqa_bench.storage.jsonl`: hashes and JSON Lines;
- :mod:`~medqa_bench.storage.paths`, :mod:`~medqa_bench.storage.provenance`: where things are, and what ran.
"""
