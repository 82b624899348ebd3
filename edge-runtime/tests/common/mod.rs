//! What the CLI tests share: the binary, the committed model, and a success check.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn edge_runtime() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge-runtime"))
}

pub fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fashion-mnist-small-cnn")
}

/// `out`, after asserting that the command succeeded (its stderr otherwise).
pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
