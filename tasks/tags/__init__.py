"""Tag extraction: KeyBERT-style keyphrases over a preloaded sentence-transformer."""
