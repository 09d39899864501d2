//! Tests of the BEP 9 state machine; the link parser's cases sit beside it in `link.rs`.

mod metadata;
