//! Typed tensor views (in progress).
