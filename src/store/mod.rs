//! Verified pieces at rest: [`memory`] (LRU by bytes, what reads are served from) and [`disk`]
//! (`--cache-dir`: files re-verified on every load). Neither knows peers, the picker, or where
//! else a piece is held; `residency` in the session decides that.

pub mod disk;
pub mod memory;

pub use disk::{DiskStore, DiskStoreError};
pub use memory::{Insert, Store};
