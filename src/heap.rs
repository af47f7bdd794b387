//! Deep futures made on the heap, where they are made (issue 23).
//!
//! An unoptimised (debug) build gives every value of an async fn's poll its
//! own stack slot, and an awaited call's future is built in such a slot
//! before it is moved into the caller's state: each level of nesting holds a
//! copy-sized slot of everything below it. The partition pass nests deep
//! (pass, table, retirement, archive upload, AWS SDK), so its stack grew
//! with depth × future size and outgrew a 2 MiB thread. `Box::pin(f())`
//! still builds `f()`'s future in the caller's frame first; [`boxed`] builds
//! it inside its own short-lived frame, so the caller keeps only a pointer.
//! Release builds fold the copies away; the allocation is one per step.

use std::future::Future;
use std::pin::Pin;

/// `make()`'s future, built directly on the heap. Keeps `Send` (unlike
/// `saga::Boxed`): the partition pass runs on spawned tasks.
pub fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::pin(make())
}
