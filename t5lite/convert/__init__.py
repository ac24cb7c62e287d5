"""Other frameworks' checkpoints: Hugging Face transformers' T5 / mT5 / BART weights both
ways (hf.py), and HF folders to and from t5lite run folders (hf_folders.py)."""
