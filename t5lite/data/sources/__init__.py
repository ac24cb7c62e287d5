"""Where text comes from: one gin-configurable Sources (sources.py) for every task
family, JSON-lines shards as a seqio source (json_lines.py), and the embedded default corpus
(demo_corpus.py)."""
