"""Vocabularies: T5's SentencePiece with sentinels, trained or loaded (sentencepiece.py),
and GPT-2 byte-level BPE with BART's ids (gpt2.py)."""
