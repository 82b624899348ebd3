//! The self-supervised methods. Each has its own config; defaults come from the papers and
//! their official code.

pub mod bank_loss;
pub mod deepcluster;
pub mod feature_bank;
pub mod figure_pairs;
pub mod isotropy;
pub mod local_aggregation;
pub mod npid;
pub mod swav;

use serde::{Deserialize, Serialize};

/// The methods `--method` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Deepcluster,
    Npid,
    /// Local Aggregation: NPID's bank, then the close/background neighbour loss.
    La,
    /// SwAV: swapped prediction of Sinkhorn codes over learnable prototypes, multi-crop.
    Swav,
    /// Contrastive pretraining on pairs of generated figures that differ in everything but
    /// their outline (colour, background, lighting, place); the data is not trained on.
    FigurePairs,
}
