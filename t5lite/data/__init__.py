"""The data side, in layers (each imports only those before it): vocabularies (vocab/) and
text sources (sources/); objectives (objectives/); seqio tasks (tasks/); the token cache
(cache/); the feeds the trainer reads (feed/); and a task's examples and statistics
(statistics.py, `t5lite inspect`)."""
