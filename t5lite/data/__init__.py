"""t5lite data: text sources, vocabularies, objectives, seqio tasks, the token cache and feeds."""
