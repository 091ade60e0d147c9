//! A randomized concurrent workload with a history checker, shared by
//! `tests/consistency_history.rs` (the bounded CI run and the long soak),
//! `tests/faults.rs` and `tests/interleavings.rs`.
//!
//! - [`model`]: the uniform row/key the workload speaks ([`Row`], [`Key`]) and how it maps to
//!   the two cached test entities (`users`, `tags`), plus [`TxOps`]: the transaction
//!   operations both implementations provide.
//! - [`ours`]: diesel-l2 behind the [`Store`] interface.
//! - [`naive`]: a textbook cache-aside over the same tables (moka `get_with` on a miss,
//!   invalidate after commit), behind the same interface.
//! - [`history`]: what every operation did, with its start and end instants.
//! - [`checker`]: the checks (C1, C2, C3, C4, C6, nothing lost), each with its soundness
//!   argument.
//! - [`workload`]: the operation mix, the threads, the checkpoints and the figures.

#![allow(dead_code)]

pub mod checker;
pub mod history;
pub mod model;
pub mod naive;
pub mod ours;
pub mod workload;

#[allow(unused_imports)]
pub use model::{Key, Kind, Row, Store, TxOps};
