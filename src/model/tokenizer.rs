//! SentencePiece-style tokenizer built from GGUF metadata (in progress).
