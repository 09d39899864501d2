//! The one way btfs takes a `std::sync::Mutex`.
//!
//! Every mutex here guards plain data for a few synchronous steps and is never held across an
//! `.await`. A panic while one is held has already ended its task; the data it left is still
//! good enough to report status and shut down, so a poisoned lock is taken over instead of
//! spreading the panic into every FUSE reply and peer task.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking over a poisoned lock (see the module doc).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
