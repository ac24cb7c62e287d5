"""The token cache: tokenized text as ArrayRecord blocks, its format and metadata
(format.py), what it is keyed on (keys.py), what its feed knows of each task (manifest.py),
building it (build.py) and reading it (reader.py)."""
