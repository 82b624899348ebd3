//! The report's adaptation section: what the board's adapter (`BANK/adapter.bin`) holds, so
//! a person sees whether the camera was found tilted, how far the statistics moved, and how
//! many trained updates were kept; or why there is nothing to show.

use std::fmt::Write;

use models::adapt::Recentring;

use super::html::escape;
use crate::adapt::AdapterRecord;
use crate::EdgeError;

/// The section's HTML for what reading the adapter gave.
pub fn section(adapter: &Result<Option<AdapterRecord>, EdgeError>) -> String {
    let mut out = String::from("<h2 id=\"adaptation\">Adaptation</h2>\n");
    let record = match adapter {
        Ok(Some(r)) => r,
        Ok(None) => {
            out.push_str(
                "<p class=\"meta\">No adapter beside this bank: the runs that filled it did \
                 not adapt (<code>run --adapt stats</code> does).</p>\n",
            );
            return out;
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "<p class=\"meta\">The adapter could not be read: {}</p>",
                escape(&e.to_string())
            );
            return out;
        }
    };
    out.push_str("<table>\n");
    for (what, value) in rows(record) {
        let _ = writeln!(
            out,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(what),
            escape(&value)
        );
    }
    out.push_str("</table>\n");
    out
}

fn rows(r: &AdapterRecord) -> Vec<(&'static str, String)> {
    let roll = match &r.roll {
        None => "not searched yet (it runs once the warm-up's frames are in)".to_string(),
        Some(e) if e.degrees == 0.0 => "searched: the camera is level (no turn kept)".into(),
        Some(e) => format!("every frame turned back by {:.1} degrees", e.degrees),
    };
    let smoothing = match &r.smoothing {
        None => "not searched yet (it runs once the warm-up's frames are in)".to_string(),
        Some(e) if e.sigma == 0.0 => "searched: the frames are as sharp as the training \
                                      images (none kept)"
            .into(),
        Some(e) => format!(
            "every frame smoothed by a Gaussian of {:.1} pixels",
            e.sigma
        ),
    };
    let deblock = match &r.deblock {
        None => "not measured yet (it runs once the warm-up's frames are in)".to_string(),
        Some(e) if e.block == 0 => format!(
            "measured: no codec block grid in the frames (blockiness {:.2}; none kept)",
            e.ratio
        ),
        Some(e) => format!(
            "every frame deblocked along its {0} x {0} grid (blockiness {1:.2})",
            e.block, e.ratio
        ),
    };
    let input = match &r.input {
        None => "off".to_string(),
        Some(s) => {
            let (mean, std) = s.moments();
            format!(
                "{} frames seen; per channel, mean {} and standard deviation {} (the training \
                 images: 0 and 1)",
                s.count,
                list(&mean),
                list(&std)
            )
        }
    };
    let embedding = match &r.recentring {
        None => "off".to_string(),
        Some(rc) => {
            let kind = match rc {
                Recentring::Diagonal(_) => "per dimension",
                Recentring::Full(_) => "whitened",
            };
            format!("{kind}, from {} embeddings", rc.seen())
        }
    };
    vec![
        ("frames adapted", r.frames.to_string()),
        ("deblocking", deblock),
        ("camera roll", roll),
        ("input smoothing", smoothing),
        ("input statistics", input),
        ("embedding statistics", embedding),
        (
            "trained layer",
            format!(
                "{} update{} kept; distance from the identity {:.4}",
                r.updates,
                if r.updates == 1 { "" } else { "s" },
                r.linear.distance_from_identity()
            ),
        ),
        ("memory", format!("{} bytes", r.memory_bytes())),
        (
            "model",
            format!(
                "sha256 {}",
                r.model_sha256.get(..12).unwrap_or(&r.model_sha256)
            ),
        ),
    ]
}

fn list(v: &[f32]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
    items.join(", ")
}

#[cfg(test)]
mod tests {
    use models::adapt::deblock::DeblockEstimate;
    use models::adapt::roll::RollEstimate;
    use models::adapt::smoothing::SmoothingEstimate;
    use models::adapt::LinearAdapter;

    use super::*;
    use crate::adapt::store::ADAPTER_FORMAT;

    fn record(roll: Option<f32>) -> AdapterRecord {
        AdapterRecord {
            format: ADAPTER_FORMAT,
            model_sha256: "0123456789abcdef".into(),
            updates: 2,
            frames: 900,
            linear: LinearAdapter::identity(4),
            recentring: None,
            input: None,
            roll: roll.map(|degrees| RollEstimate {
                degrees,
                distance_best: 0.1,
                distance_unturned: 0.5,
                distance_opposite: 0.9,
                tried: Vec::new(),
            }),
            // Searched with the roll: a turned record was also smoothed.
            smoothing: roll.map(|degrees| SmoothingEstimate {
                sigma: if degrees == 0.0 { 0.0 } else { 0.6 },
                distance_best: 0.1,
                distance_unsmoothed: 0.3,
                tried: Vec::new(),
            }),
            deblock: roll.map(|degrees| DeblockEstimate {
                ratio: if degrees == 0.0 { 1.02 } else { 2.4 },
                block: if degrees == 0.0 { 0 } else { 8 },
            }),
        }
    }

    #[test]
    fn the_section_says_what_the_adapter_holds_or_why_there_is_none() {
        let turned = section(&Ok(Some(record(Some(20.0)))));
        assert!(turned.contains("turned back by 20.0 degrees"), "{turned}");
        assert!(turned.contains("Gaussian of 0.6 pixels"), "{turned}");
        assert!(
            turned.contains("deblocked along its 8 x 8 grid (blockiness 2.40)"),
            "{turned}"
        );
        assert!(
            turned.contains("2 updates kept") && turned.contains("900"),
            "{turned}"
        );
        let level = section(&Ok(Some(record(Some(0.0)))));
        assert!(level.contains("level"), "{level}");
        assert!(level.contains("as sharp as the training images"), "{level}");
        assert!(level.contains("no codec block grid"), "{level}");
        assert!(section(&Ok(Some(record(None)))).contains("not searched yet"));
        assert!(section(&Ok(None)).contains("No adapter"));
        let broken = section(&Err(EdgeError::NoEmbeddingStats {
            path: "<bank>/x".into(),
        }));
        assert!(broken.contains("could not be read") && broken.contains("&lt;bank&gt;"));
    }
}
