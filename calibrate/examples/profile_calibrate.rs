//! Where the time of one calibration goes on 100,000 synthetic scores (release build):
//! `cargo run --release -p calibrate --example profile_calibrate`.
use std::time::Instant;

use calibrate::{calibrate, ModelRef, ScoreTable, Settings};

fn main() {
    let mut st: u64 = 5;
    let mut next = || {
        st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (st >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut t = ScoreTable {
        source: "synthetic".into(),
        ..Default::default()
    };
    for i in 0..100_000 {
        let z = (next() - 0.5) * 10.0;
        t.logits.push(z);
        t.labels.push(u8::from(next() < 1.0 / (1.0 + (-(0.7 * z - 1.0)).exp())));
        t.seriesuid.push(format!("S{}", i / 50));
    }
    let s = Settings {
        bootstrap: 0,
        ..Settings::for_run(std::path::Path::new("."))
    };
    let m = ModelRef {
        path: "m.onnx".into(),
        sha256: "ab".repeat(32),
    };
    let t0 = Instant::now();
    let f = calibrate::Fitted::fit(&t.logits, &t.labels, false).expect("fit");
    println!("three fits: {:.3} s", t0.elapsed().as_secs_f64());
    let t0 = Instant::now();
    let _ = calibrate::cross_validate(&t, false, 5).expect("cv");
    println!("5-fold CV of three methods: {:.3} s", t0.elapsed().as_secs_f64());
    let t0 = Instant::now();
    let p: Vec<f64> = t
        .logits
        .iter()
        .map(|&z| f.probability(calibrate::Method::Platt, z))
        .collect();
    let lp: Vec<f64> = t
        .logits
        .iter()
        .map(|&z| f.log_odds(calibrate::Method::Platt, z))
        .collect();
    let _ = calibrate::metrics::compute_metrics(&p, &lp, &t.labels);
    println!("metrics of one method: {:.3} s", t0.elapsed().as_secs_f64());
    let t0 = Instant::now();
    let _ = calibrate(&t, &s, m).expect("calibrate");
    println!(
        "whole calibration (no bootstrap, no I/O): {:.3} s",
        t0.elapsed().as_secs_f64()
    );
}
