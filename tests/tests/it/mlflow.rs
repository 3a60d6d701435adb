//! MLflow tracking against a real `mlflow server` (PyPI `mlflow`, SQLite backend, artifacts
//! served, 127.0.0.1) that the test starts and stops; everything is read back through MLflow's
//! own Python client and compared with the run folder's files. The server is also taken away
//! in the middle of a run (paused and resumed around it): nothing is lost, and the resumed run
//! continues the same MLflow run.
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use chain_tests::{run, run_ok, s, workspace};

/// A running `mlflow server`, stopped when dropped.
struct Server {
    child: Child,
    uri: String,
}

impl Server {
    /// Starts a server on `port` with its database and artifacts under `dir` (the same
    /// `dir` and port after a stop: the same server again).
    fn start(dir: &Path, port: u16) -> Server {
        let child = Command::new(workspace().join(".venv-mlflow/bin/mlflow"))
            .args([
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--workers",
                "1",
            ])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .arg("--serve-artifacts")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("server.log")).expect("log")))
            .process_group(0)
            .spawn()
            .expect("mlflow server (scripts/setup installs it into .venv-mlflow)");
        let uri = format!("http://127.0.0.1:{port}");
        let s = Server { child, uri };
        for _ in 0..240 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && client(&[
                    "-c",
                    &format!("import urllib.request; urllib.request.urlopen('{}/health')", s.uri),
                ])
                .ok
            {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        panic!(
            "mlflow server did not start: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The server's whole process group (its gunicorn or uvicorn workers too).
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// MLflow's Python.
fn client(args: &[&str]) -> chain_tests::Run {
    Command::new(workspace().join(".venv-mlflow/bin/python"))
        .args(args)
        .output()
        .expect("python")
        .into()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// What MLflow's client says of the run with this key: run id, status, params, each metric's
/// history (step, value), the artifacts' sha256.
fn read_back(uri: &str, key: &str, download: &Path) -> serde_json::Value {
    let script = r#"
import hashlib, json, os, sys
from mlflow.tracking import MlflowClient
uri, key, dl = sys.argv[1:4]
c = MlflowClient(tracking_uri=uri)
exp = c.get_experiment_by_name("nodule")
runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`nodule.run_key` = '{key}'")
out = {"runs": len(runs)}
r = runs[0]
out["run_id"] = r.info.run_id
out["status"] = r.info.status
out["params"] = r.data.params
out["tags"] = r.data.tags
out["metrics"] = {k: sorted([m.step, m.value] for m in c.get_metric_history(r.info.run_id, k)) for k in r.data.metrics}
arts = {}
for a in c.list_artifacts(r.info.run_id):
    p = c.download_artifacts(r.info.run_id, a.path, dl)
    arts[a.path] = hashlib.sha256(open(p, "rb").read()).hexdigest()
out["artifacts"] = arts
print(json.dumps(out))
"#;
    std::fs::create_dir_all(download).expect("mkdir");
    let r = client(&["-c", script, uri, key, s(download)]);
    assert!(r.ok, "{}", r.stderr);
    serde_json::from_str(r.stdout.trim()).expect("json")
}

/// The run folder's metrics.csv as {metric: [(epoch, value)]}.
fn folder_metrics(run: &Path) -> std::collections::BTreeMap<String, Vec<(u64, f64)>> {
    let (h, rows) = chain_tests::read_csv(&run.join("metrics.csv"));
    let mut out: std::collections::BTreeMap<String, Vec<(u64, f64)>> = Default::default();
    for r in &rows {
        let epoch: u64 = r[chain_tests::col(&h, "epoch")].parse().expect("epoch");
        for (k, v) in h.iter().zip(r) {
            if k == "epoch" || k == "best" {
                continue;
            }
            if let Ok(x) = v.parse::<f64>() {
                out.entry(k.clone()).or_default().push((epoch, x));
            }
        }
    }
    out
}

/// Checks that MLflow holds exactly the run folder: every epoch's metrics once, every config
/// key as a param, every artifact as the file, the model's sha256 as a tag, FINISHED.
fn assert_equal_to_folder(back: &serde_json::Value, run: &Path) {
    assert_eq!(back["runs"], 1, "one MLflow run for the key");
    assert_eq!(back["status"], "FINISHED");
    let want = folder_metrics(run);
    for (k, pts) in &want {
        let got: Vec<(u64, f64)> = back["metrics"][k]
            .as_array()
            .unwrap_or_else(|| panic!("metric {k} missing: {}", back["metrics"]))
            .iter()
            .map(|p| (p[0].as_u64().expect("step"), p[1].as_f64().expect("value")))
            .collect();
        assert_eq!(&got, pts, "metric {k}");
    }
    let cfg: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(run.join("config.yaml")).expect("config")).expect("yaml");
    assert_eq!(
        back["params"]["train.epochs"].as_str(),
        cfg["train"]["epochs"].as_u64().map(|e| e.to_string()).as_deref()
    );
    assert_eq!(back["params"]["data"].as_str(), cfg["data"].as_str());
    for f in [
        "model.onnx",
        "metrics.csv",
        "summary.yaml",
        "config.yaml",
        "val_scores.csv",
        "curves.png",
    ] {
        let sha = models::fsutil::sha256_file(&run.join(f)).expect("sha");
        assert_eq!(back["artifacts"][f].as_str(), Some(sha.as_str()), "artifact {f}");
    }
    let model_sha = models::fsutil::sha256_file(&run.join("model.onnx")).expect("sha");
    assert_eq!(back["tags"]["nodule.model_sha256"].as_str(), Some(model_sha.as_str()));
}

/// The key the exported model records.
fn model_key(run: &Path) -> String {
    let md = models::onnx::metadata(&models::onnx::read_model(&run.join("model.onnx")).expect("model"));
    md.get("training.mlflow_run_key")
        .cloned()
        .expect("training.mlflow_run_key in the model's metadata")
}

fn train_args<'a>(data: &'a Path, out: &'a Path, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        s(data),
        "--out",
        s(out),
        "--cube-size",
        "16",
        "--width",
        "2",
        "--epochs",
        epochs,
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "-q",
    ]
}

#[test]
fn a_run_is_tracked_in_a_real_mlflow_server_and_survives_the_server_going_away() {
    let d = tempfile::tempdir().expect("tmp");
    let w = d.path();
    let data = w.join("patches");
    run_ok(
        "trainer",
        &[
            "synth",
            "--out",
            s(&data),
            "--series",
            "16",
            "--patches-per-series",
            "8",
            "--cube-size",
            "16",
        ],
    );
    let port = free_port();
    let server_dir = w.join("server");
    std::fs::create_dir_all(&server_dir).expect("mkdir");

    // 1. A run tracked live: MLflow holds what the folder holds.
    let server = Server::start(&server_dir, port);
    let uri = server.uri.clone();
    let live = w.join("live");
    let mut a = train_args(&data, &live, "8");
    a.extend(["--mlflow", &uri]);
    let r = run_ok("trainer", &a);
    assert!(
        r.stderr.contains("MLflow: run ") && r.stderr.contains("8 epochs of metrics"),
        "{}",
        r.stderr
    );
    assert_equal_to_folder(&read_back(&uri, &model_key(&live), &w.join("dl1")), &live);
    // calibrate adds its calibration to the same MLflow run: the chosen method's metrics,
    // the method as a tag, its files as artifacts.
    let r = run_ok(
        "calibrate",
        &[s(&live), "--bootstrap", "0", "--method", "platt", "--no-report"],
    );
    assert!(r.stderr.contains("MLflow: calibration added to run"), "{}", r.stderr);
    let back = read_back(&uri, &model_key(&live), &w.join("dl1c"));
    assert_equal_to_folder(&back, &live);
    let cal: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(live.join("calibration.yaml")).expect("cal")).expect("yaml");
    assert_eq!(back["tags"]["nodule.calibration_method"], "platt");
    assert_eq!(
        back["metrics"]["calibration.auroc"][0][1].as_f64(),
        cal["metrics"]["platt"]["auroc"].as_f64()
    );
    for f in ["calibration.yaml", "model.calibrated.onnx"] {
        let sha = models::fsutil::sha256_file(&live.join(f)).expect("sha");
        assert_eq!(back["artifacts"][f].as_str(), Some(sha.as_str()), "artifact {f}");
    }

    // 2. The server goes away in the middle of a run: two epochs sent, then it stops; the
    //    run goes on (paused and resumed) without it, keeping what it could not send; the
    //    server comes back, the run is resumed to its end, and MLflow holds every epoch once,
    //    in the same MLflow run.
    let gone = w.join("gone");
    let mut a = train_args(&data, &gone, "6");
    a.extend(["--mlflow", &uri, "--stop-after", "2"]);
    run_ok("trainer", &a);
    drop(server);
    let t0 = std::time::Instant::now();
    let r = run_ok(
        "trainer",
        &[
            "train",
            "--resume",
            s(&gone),
            "--stop-after",
            "4",
            "--mlflow",
            &uri,
            "-q",
        ],
    );
    assert!(
        r.stderr.contains("not everything reached") && r.stderr.contains("mlflow-sync"),
        "{}",
        r.stderr
    );
    assert!(
        t0.elapsed().as_secs() < 60,
        "a run without its server took {:?}",
        t0.elapsed()
    );
    let server = Server::start(&server_dir, port);
    run_ok("trainer", &["train", "--resume", s(&gone), "--mlflow", &uri, "-q"]);
    assert_equal_to_folder(&read_back(&uri, &model_key(&gone), &w.join("dl2")), &gone);

    // 3. A run trained while the server was down sends everything later with mlflow-sync.
    drop(server);
    let later = w.join("later");
    let mut a = train_args(&data, &later, "2");
    a.extend(["--mlflow", &uri]);
    let r = run_ok("trainer", &a);
    assert!(r.stderr.contains("not everything reached"), "{}", r.stderr);
    let r = run("trainer", &["mlflow-sync", s(&later)]);
    assert!(!r.ok && r.stderr.contains("nothing is lost"), "{}", r.stderr);
    let _server = Server::start(&server_dir, port);
    let r = run_ok("trainer", &["mlflow-sync", s(&later)]);
    assert!(r.stdout.contains("2 epochs of metrics"), "{}", r.stdout);
    assert_equal_to_folder(&read_back(&uri, &model_key(&later), &w.join("dl3")), &later);
    // Sending again changes nothing (one run, the same points).
    run_ok("trainer", &["mlflow-sync", s(&later)]);
    assert_equal_to_folder(&read_back(&uri, &model_key(&later), &w.join("dl4")), &later);
}
