//! `froc` against the official LUNA16 computation as an independent Python reference writes
//! it (`tests/reference/`: sklearn's roc_curve and np.interp). Run on the binary Cargo builds
//! for these tests.
use chain_tests::{run_ok, s};

const FROC: &str = env!("CARGO_BIN_EXE_froc");

/// Random LUNA16-like data with ties, boundary distances, excluded findings, scans without
/// results and a busy scan over the cap; `froc` must give the seven sensitivities an
/// independent Python reference computes with sklearn's roc_curve and np.interp.
#[test]
fn froc_matches_the_sklearn_reference() {
    let d = tempfile::tempdir().expect("tmp");
    let mut seed: u64 = 2024;
    let mut next = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    for case in 0..3 {
        let n_scans = 30 + 10 * case;
        let uids: Vec<String> = (0..n_scans).map(|i| format!("1.2.3.{case}.{i}")).collect();
        let (mut ann, mut exc, mut res) = (String::new(), String::new(), String::new());
        ann += "seriesuid,coordX,coordY,coordZ,diameter_mm\n";
        exc += "seriesuid,coordX,coordY,coordZ,diameter_mm\n";
        res += "seriesuid,coordX,coordY,coordZ,probability\n";
        for (si, u) in uids.iter().enumerate() {
            let n_nod = (next() * 3.0) as usize;
            for k in 0..n_nod {
                let (x, diam) = (100.0 * k as f64, 4.0 + (next() * 20.0).round());
                ann += &format!("{u},{x},0,0,{diam}\n");
                // A hit, a candidate exactly on the radius (not a hit), sometimes a second hit.
                if next() < 0.8 {
                    res += &format!("{u},{},0,0,{}\n", x + 1.0, (next() * 10.0).round() / 10.0);
                }
                res += &format!("{u},{},0,0,{}\n", x + diam / 2.0, (next() * 10.0).round() / 10.0);
                if next() < 0.3 {
                    res += &format!("{u},{},0,0,{}\n", x - 1.0, (next() * 10.0).round() / 10.0);
                }
            }
            if next() < 0.5 {
                exc += &format!("{u},1000,0,0,-1\n");
                res += &format!("{u},1003,0,0,{}\n", (next() * 10.0).round() / 10.0);
            }
            // Scan 0 is over the cap of 100; the last scan has no results at all.
            let n_fp = if si == 0 {
                130
            } else if si + 1 == uids.len() {
                0
            } else {
                (next() * 8.0) as usize
            };
            for k in 0..n_fp {
                res += &format!(
                    "{u},{},500,0,{}\n",
                    2000.0 + 50.0 * k as f64,
                    (next() * 20.0).round() / 20.0
                );
            }
        }
        let w = |name: &str, text: &str| {
            let p = d.path().join(format!("{case}_{name}"));
            std::fs::write(&p, text).expect("write");
            p
        };
        let (a, e, r) = (w("ann.csv", &ann), w("exc.csv", &exc), w("res.csv", &res));
        let u = w("uids.csv", &(uids.join("\n") + "\n"));
        let out = d.path().join(format!("{case}_out"));
        run_ok(
            FROC,
            &[
                "--annotations",
                s(&a),
                "--excluded",
                s(&e),
                "--seriesuids",
                s(&u),
                "--results",
                s(&r),
                "-o",
                s(&out),
                "--bootstrap",
                "0",
            ],
        );
        let y: yaml_serde::Value =
            yaml_serde::from_str(&std::fs::read_to_string(out.join("froc_summary.yaml")).expect("read")).expect("yaml");
        let ours: Vec<f64> = y["rates"]
            .as_sequence()
            .expect("rates")
            .iter()
            .map(|p| p["sensitivity"].as_f64().expect("f64"))
            .collect();
        let py = chain_tests::python();
        let script = chain_tests::workspace().join("tests/reference/luna16_froc_reference.py");
        let o = std::process::Command::new(py)
            .arg(script)
            .args([&a, &e, &u, &r])
            .output()
            .expect("python");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let reference: Vec<f64> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.parse().expect("float"))
            .collect();
        assert_eq!(reference.len(), 7);
        for (k, (a, b)) in ours.iter().zip(&reference).enumerate() {
            assert!((a - b).abs() <= 1e-12, "case {case}, rate {k}: ours {a}, reference {b}");
        }
        assert!(y["totals"]["candidates_dropped_by_cap"].as_u64().expect("cap") > 0);
    }
}
