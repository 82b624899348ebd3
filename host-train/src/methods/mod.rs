//! The self-supervised methods. Each has its own config; defaults come from the papers and
//! their official code.

pub mod deepcluster;
pub mod npid;

use serde::{Deserialize, Serialize};

/// The methods `--method` accepts. Local Aggregation is not implemented yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Deepcluster,
    Npid,
}
