//! Verified pieces at rest: [`memory`] (LRU by bytes, what reads are served from; its budget is
//! a [`pool`] shared by every torrent of a process) and [`disk`]
//! (`--cache-dir`: files re-verified on every load; its budget, too, one [`DiskPool`] for every
//! torrent of a process). Neither knows peers, the picker, or where else a piece is held;
//! `residency` in the session decides that.

pub mod disk;
pub mod memory;
pub mod pool;

pub use disk::{DiskFloor, DiskPool, DiskStore, DiskStoreError};
pub use memory::{Insert, Store};
pub use pool::MemoryPool;
