//! GGUF reader (in progress).
