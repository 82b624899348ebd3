//! Optimisers for candle `Var`s.

mod sgd;

pub use sgd::{SgdMomentum, SgdParams};
