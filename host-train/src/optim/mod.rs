//! Optimisers for candle `Var`s, and learning-rate schedules.

mod schedule;
mod sgd;

pub use schedule::WarmupCosine;
pub use sgd::{SgdMomentum, SgdParams};
