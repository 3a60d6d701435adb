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
def walk(path):
    for a in c.list_artifacts(r.info.run_id, path):
        if a.is_dir:
            walk(a.path)
        else:
            p = c.download_artifacts(r.info.run_id, a.path, dl)
            arts[a.path] = hashlib.sha256(open(p, "rb").read()).hexdigest()
walk(None)
out["artifacts"] = arts
out["children"] = sorted(
    [x.info.run_name, x.data.tags.get("nodule.run_key"), x.info.status]
    for x in c.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{r.info.run_id}'")
)
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
        let sha = files::sha256_file(&run.join(f)).expect("sha");
        assert_eq!(back["artifacts"][f].as_str(), Some(sha.as_str()), "artifact {f}");
    }
    let model_sha = files::sha256_file(&run.join("model.onnx")).expect("sha");
    assert_eq!(back["tags"]["nodule.model_sha256"].as_str(), Some(model_sha.as_str()));
}

/// The key a folder's `mlflow.yaml` holds.
fn state_key(dir: &Path) -> String {
    let v: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(dir.join("mlflow.yaml")).expect("mlflow.yaml")).expect("yaml");
    v["key"].as_str().expect("key").to_string()
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

/// `froc --model` on a tracked model: MLflow's run gets `froc.*` metrics equal to
/// froc_summary.yaml and the files under `froc/`; an untracked model says nothing was sent.
fn froc_adds_to_the_models_run(w: &Path, run: &Path, uri: &str) {
    let md = models::onnx::metadata(&models::onnx::read_model(&run.join("model.onnx")).expect("model"));
    assert_eq!(md.get("training.mlflow_tracking_uri").map(String::as_str), Some(uri));
    assert_eq!(md.get("training.mlflow_experiment").map(String::as_str), Some("nodule"));
    let e = w.join("eval");
    std::fs::create_dir_all(&e).expect("mkdir");
    std::fs::write(e.join("series.csv"), "s1\ns2\n").expect("w");
    std::fs::write(
        e.join("annotations.csv"),
        "seriesuid,coordX,coordY,coordZ,diameter_mm\ns1,0,0,0,10\ns2,20,20,20,8\n",
    )
    .expect("w");
    std::fs::write(
        e.join("results.csv"),
        "seriesuid,coordX,coordY,coordZ,probability\ns1,0,0,1,0.9\ns1,50,50,50,0.8\ns2,10,10,10,0.3\ns2,20,21,20,0.2\n",
    )
    .expect("w");
    let froc_args = |out: &Path, model: &Path| -> Vec<String> {
        [
            "--annotations",
            s(&e.join("annotations.csv")),
            "--seriesuids",
            s(&e.join("series.csv")),
            "--results",
            s(&e.join("results.csv")),
            "--bootstrap",
            "50",
            "-o",
            s(out),
            "--model",
            s(model),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let out = e.join("froc");
    let a = froc_args(&out, &run.join("model.onnx"));
    let r = run_ok("froc", &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(r.stderr.contains("metrics and 5 files added to run"), "{}", r.stderr);
    let back = read_back(uri, &model_key(run), &w.join("dl_froc"));
    let summary: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(out.join("froc_summary.yaml")).expect("summary")).expect("yaml");
    assert_eq!(back["metrics"]["froc.cpm"][0][1].as_f64(), summary["cpm"].as_f64());
    assert_eq!(
        back["metrics"]["froc.cpm_ci_lower"][0][1].as_f64(),
        summary["cpm_ci"][0].as_f64()
    );
    let rates = summary["rates"].as_sequence().expect("rates");
    assert_eq!(rates.len(), 7);
    for p in rates {
        let k = format!("froc.sensitivity_at_{}", p["fp_per_scan"].as_f64().expect("rate"));
        assert_eq!(back["metrics"][&k][0][1].as_f64(), p["sensitivity"].as_f64(), "{k}");
    }
    for f in [
        "froc_summary.yaml",
        "froc_curve.csv",
        "froc_bootstrap.csv",
        "nodules_without_candidate.csv",
        "froc.png",
    ] {
        let sha = files::sha256_file(&out.join(f)).expect("sha");
        assert_eq!(
            back["artifacts"][format!("froc/{f}")].as_str(),
            Some(sha.as_str()),
            "artifact froc/{f}"
        );
    }
    assert_eq!(back["status"], "FINISHED", "the training run's status is not froc's to change");
    // A model trained without tracking: the FROC is written, and the line says nothing was sent.
    let data = w.join("patches");
    let plain = w.join("plain");
    run_ok("trainer", &train_args(&data, &plain, "1"));
    let a = froc_args(&e.join("froc_plain"), &plain.join("model.onnx"));
    let r = run_ok("froc", &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(r.stderr.contains("trained without tracking") && r.stderr.contains("nothing sent"), "{}", r.stderr);
    assert!(!e.join("froc_plain").join("mlflow.yaml").exists());
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
        let sha = files::sha256_file(&live.join(f)).expect("sha");
        assert_eq!(back["artifacts"][f].as_str(), Some(sha.as_str()), "artifact {f}");
    }
    // froc --model adds its CPM, sensitivities and files to the run that made the model (the
    // model's metadata names the run and its server; no flag or variable needed).
    froc_adds_to_the_models_run(w, &live, &uri);

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

/// A sweep tracked as MLflow's parent run with one child run per configuration and fold:
/// its tasks run at once as an array's would (four processes creating the parent together:
/// one parent), each child equal to its fold folder, and the parent, after `--collect`, holds
/// the summary's figures per configuration and its files.
#[test]
fn a_sweep_is_a_parent_run_with_a_child_per_configuration_and_fold() {
    let d = tempfile::tempdir().expect("tmp");
    let w = d.path();
    let data = w.join("patches");
    run_ok(
        "trainer",
        &[
            "synth", "--out", s(&data), "--series", "12", "--patches-per-series", "6", "--cube-size", "16",
        ],
    );
    let file = w.join("sweep.yaml");
    let out = w.join("sw");
    std::fs::write(
        &file,
        format!(
            "config:\n  data: {}\n  out: unused\n  model: {{ width: 2 }}\n  preprocess: {{ cube_size: 16 }}\n  \
             train: {{ epochs: 2, batch_size: 8, lr: 0.003, device: cpu }}\nout: {}\nfolds: 2\ngrid:\n  model.width: [2, 3]\n",
            s(&data),
            s(&out)
        ),
    )
    .expect("write");
    let server_dir = w.join("server");
    std::fs::create_dir_all(&server_dir).expect("mkdir");
    let server = Server::start(&server_dir, free_port());
    let uri = server.uri.clone();
    // Four tasks at once, as a job array runs them.
    let children: Vec<_> = (0..4)
        .map(|i| {
            Command::new(chain_tests::bin("trainer"))
                .args(["sweep", s(&file), "-q", "--mlflow", &uri])
                .env("SLURM_ARRAY_TASK_ID", i.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("trainer")
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().expect("wait");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let r = run_ok("trainer", &["sweep", s(&file), "--collect", "--mlflow", &uri]);
    assert!(r.stderr.contains("sweep summary added to parent run"), "{}", r.stderr);

    let key = state_key(&out);
    let back = read_back(&uri, &key, &w.join("dl_parent"));
    assert_eq!(back["runs"], 1, "one parent run");
    assert_eq!(back["status"], "FINISHED");
    assert_eq!(back["params"]["sweep.folds"], "2");
    assert_eq!(back["params"]["sweep.cell_01"], "model.width=3");
    assert_eq!(back["params"]["base.model.width"], "2");
    // Its children: one per configuration and fold, each the run its folder holds.
    let kids = back["children"].as_array().expect("children");
    let mut want = Vec::new();
    for (c, f) in [(0, 1), (0, 2), (1, 1), (1, 2)] {
        let dir = out.join(format!("cell_{c:02}/fold_{f}"));
        let k = state_key(&dir);
        assert_eq!(model_key(&dir), k);
        want.push(serde_json::json!([format!("cell_{c:02}/fold_{f}"), k, "FINISHED"]));
        let child = read_back(&uri, &k, &w.join(format!("dl_{c}_{f}")));
        assert_equal_to_folder(&child, &dir);
        assert_eq!(child["tags"]["nodule.sweep.cell"], c.to_string());
        assert_eq!(child["tags"]["nodule.sweep.fold"], f.to_string());
    }
    assert_eq!(kids, &want);
    // The parent's metrics are the summary's, per configuration; its files are the summary's.
    let (h, rows) = chain_tests::read_csv(&out.join("sweep_summary.csv"));
    assert_eq!(rows.len(), 2);
    for r in &rows {
        let i: usize = r[chain_tests::col(&h, "index")].parse().expect("index");
        for m in ["mean_val_auroc", "pooled_oof_auroc"] {
            let v: f64 = r[chain_tests::col(&h, m)].parse().expect("value");
            assert_eq!(
                back["metrics"][format!("cell_{i:02}.{m}")][0][1].as_f64(),
                Some(v),
                "cell {i} {m}"
            );
        }
    }
    for f in [
        "sweep_summary.csv",
        "sweep_summary.md",
        "forest.png",
        "sweep_plan.yaml",
        "cell_00/oof_scores.csv",
        "cell_01/oof_scores.csv",
    ] {
        let sha = files::sha256_file(&out.join(f)).expect("sha");
        assert_eq!(back["artifacts"][f].as_str(), Some(sha.as_str()), "artifact {f}");
    }
    // Sending it again changes nothing.
    let r = run_ok("trainer", &["mlflow-sync", s(&out)]);
    assert!(r.stdout.contains("MLflow: run "), "{}", r.stdout);
    let again = read_back(&uri, &key, &w.join("dl_parent2"));
    assert_eq!(again["metrics"], back["metrics"]);
    assert_eq!(again["children"], back["children"]);
}
