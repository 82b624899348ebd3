//! edge-runtime: inference backends, the on-device memory bank and online clustering.
//!
//! Only the skeleton exists so far (issue 5 fills it). It already depends on `models`, the
//! same k-means, metrics and image readers the host uses, and never on candle.
