"""Build your own C4: raw pages (Common Crawl WET files, JSON lines) -> allenai/c4-style shards,
and prune them by perplexity.

C4's rules exactly as TFDS's `c4.py` + `c4_utils.py` apply them, as datatrove pipeline steps, so
one pipeline runs locally, on SLURM or on Ray, resumably, into the shards every other t5lite
command reads (`c4_json` tasks, `register_all.json_sources`, `t5lite cache`, select, doremi):

  wet.py       reading pages: WET files (TFDS's split_wet_file), JSON lines, normalize_url
  c4_rules.py  the Recipe (each rule on/off and its constants, gin) and the per-page rules:
               clean_page, langdetect, bad words, the validation split
  dedup.py     cross-page dedup as signature -> find -> filter stages (URLs, C4's lines) and
               MinHash near-duplicates (datatrove's steps)
  steps.py     the datatrove steps: read, clean, filter, write shards
  pipeline.py  the passes of a build, its executors (local / SLURM / Ray), the build manifest
  report.py    per-rule counters gathered from datatrove's stats into report.json and a table
  demo.py      a WET file of real documents plus web boilerplate (the demo, the tests)
  prune.py     perplexity pruning of finished shards with a trained run (prefix-LM loss per
               token; low / middle / high / random fraction), plain Python on one process

Nothing here imports TensorFlow (remote paths go through t5lite/files.py, which does).
"""
