//! `edge-runtime report` on a bank made by a short run: every cluster is on the page, every
//! picture it names exists and is a real PNG, thumbnails link to their source files, entries
//! stored without a thumbnail get a placeholder, the adapter beside the bank is described,
//! and (when `REPORT_BROWSER` names a chromium, as `./scripts/test` sets it) a headless
//! browser loads the page with no broken image and takes a screenshot.

mod common;

use std::path::Path;
use std::process::Command;

use common::{edge_runtime, model_dir, ok};

/// `n` 28x28 grayscale PNGs in three kinds (stripes, a block, a ring), so the run opens
/// several clusters.
fn write_images(dir: &Path, n: u32, prefix: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::GrayImage::from_fn(28, 28, |x, y| {
            let on = match i % 3 {
                0 => (x + i) % 6 < 3,
                1 => (8..20).contains(&x) && (4..24).contains(&y),
                _ => {
                    let r2 = (x as i32 - 14).pow(2) + (y as i32 - 14).pow(2);
                    (36..121).contains(&r2)
                }
            };
            image::Luma([if on { 200 + (i % 50) as u8 } else { 10 }])
        });
        img.save(dir.join(format!("{prefix}{i:03}.png"))).unwrap();
    }
}

fn run(input: &Path, bank: &Path, extra: &[&str]) {
    ok(edge_runtime()
        .args(["run", "--precision", "fp32", "--batch", "8", "--model"])
        .arg(model_dir())
        .arg("--input")
        .arg(input)
        .arg("--bank")
        .arg(bank)
        .args(["--events", "/dev/null", "--novelty-threshold", "0.85"])
        .args(extra)
        .output()
        .unwrap());
}

/// The values of `attr="..."` in `html`.
fn attributes<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let key = format!("{attr}=\"");
    html.match_indices(&key)
        .map(|(i, _)| {
            let rest = &html[i + key.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

fn bank_clusters(bank: &Path) -> Vec<String> {
    let out = ok(edge_runtime()
        .args(["bank", "inspect", "--bank"])
        .arg(bank)
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["clusters"].as_object().unwrap().keys().cloned().collect()
}

#[test]
fn the_report_shows_every_cluster_with_pictures_that_exist_and_link_to_their_sources() {
    let dir = tempfile::tempdir().unwrap();
    let (input, late) = (dir.path().join("captures"), dir.path().join("late"));
    write_images(&input, 120, "a");
    write_images(&late, 6, "b");
    let bank = dir.path().join("bank");
    run(&input, &bank, &["--adapt", "stats"]);
    // A second run stores its frames without thumbnails.
    run(&late, &bank, &["--thumb-size", "0"]);
    let out_dir = dir.path().join("report");
    let out = ok(edge_runtime()
        .args(["report", "--per-cluster", "60", "--bank"])
        .arg(&bank)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("index.html"), "{stdout}");
    let html = std::fs::read_to_string(out_dir.join("index.html")).unwrap();

    let clusters = bank_clusters(&bank);
    assert!(clusters.len() >= 2, "{clusters:?}");
    for id in &clusters {
        assert!(
            html.contains(&format!("id=\"c{id}\"")),
            "cluster {id} missing"
        );
    }
    // Every picture resolves to a PNG; thumbnails are the model's 28x28 input.
    let sources = attributes(&html, "src");
    assert!(sources.contains(&"cluster-sizes.png"));
    let thumbs: Vec<&&str> = sources
        .iter()
        .filter(|s| s.starts_with("thumbs/"))
        .collect();
    assert!(thumbs.len() >= 60, "{} thumbnails", thumbs.len());
    for src in &sources {
        let img = image::open(out_dir.join(src)).unwrap_or_else(|e| panic!("{src}: {e}"));
        if src.starts_with("thumbs/") {
            assert_eq!((img.width(), img.height()), (28, 28), "{src}");
        }
    }
    // Thumbnails link to the image files the frames came from.
    let links: Vec<&str> = attributes(&html, "href")
        .into_iter()
        .filter(|h| h.starts_with("file://"))
        .collect();
    assert!(links.len() >= thumbs.len() / 2, "{links:?}");
    for link in &links {
        let path = link.trim_start_matches("file://");
        assert!(Path::new(path).is_file(), "{link}");
        // Only frames with a thumbnail are linked: none of the late ones.
        assert!(path.contains("/captures/a"), "{link}");
    }
    // The late frames were stored without thumbnails: placeholders, never a broken picture.
    assert!(html.contains("no thumbnail"), "no placeholder");
    // A threshold this low marks some frames novel; they are listed with their figures.
    assert!(html.contains("id=\"novel\""));
    assert!(html.contains("<th>novelty</th>"), "no novel frames listed");
    // The first run adapted: its adapter is on the page (120 frames: still in the warm-up, so
    // the roll is not searched yet).
    assert!(html.contains("id=\"adaptation\""), "no adaptation section");
    assert!(html.contains("not searched yet"), "no roll line");
    assert!(html.contains("120 frames seen"), "no input statistics");

    let Some(browser) = std::env::var_os("REPORT_BROWSER") else {
        eprintln!("REPORT_BROWSER is not set: skipping the headless-browser check");
        return;
    };
    let url = format!("file://{}", out_dir.join("index.html").display());
    let shot = dir.path().join("report.png");
    let chromium = |args: &[&str]| {
        Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(args)
            .arg(&url)
            .output()
            .unwrap()
    };
    let dom = chromium(&["--virtual-time-budget=5000", "--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("data-broken-images=\"0\""),
        "the browser found broken images (or did not run the page's check): {}",
        &dom[..dom.len().min(400)]
    );
    chromium(&[
        "--window-size=1200,1600",
        &format!("--screenshot={}", shot.display()),
    ]);
    let img = image::open(&shot)
        .expect("chromium wrote a screenshot")
        .to_rgb8();
    assert_eq!(img.dimensions(), (1200, 1600));
    // Not a blank page: the screenshot holds many colours (text, chart, thumbnails).
    let distinct: std::collections::BTreeSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 50, "{} colours", distinct.len());
}
