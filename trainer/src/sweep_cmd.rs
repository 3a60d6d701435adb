//! `trainer sweep`: its modes and what it prints (the sweep itself is `trainer::sweep`).
use std::path::PathBuf;

use anyhow::Result;
use trainer::train::RunOptions;

/// What `trainer sweep` does (the exclusive `--list`, `--collect` and `--task` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SweepMode {
    /// Print the configurations and tasks.
    List,
    /// Only write the summary.
    Collect,
    /// Run one task (`Some`: `--task` or the job array's index), or every task not done and
    /// then the summary.
    Run(Option<usize>),
}

impl SweepMode {
    pub(crate) fn of(task: Option<usize>, collect: bool, list: bool) -> Self {
        match (list, collect) {
            (true, _) => SweepMode::List,
            (false, true) => SweepMode::Collect,
            (false, false) => SweepMode::Run(task),
        }
    }
}

/// `trainer sweep`.
pub(crate) fn sweep(
    file: &std::path::Path,
    mode: SweepMode,
    ort_lib: Option<PathBuf>,
    mlflow: Option<&str>,
    quiet: bool,
) -> Result<()> {
    use trainer::sweep;
    let plan = sweep::plan(file)?;
    if mode == SweepMode::List {
        sweep_list(&plan);
        return Ok(());
    }
    sweep::check_plan_record(&plan)?;
    let mlflow = tracking::Settings::from_env(mlflow)?;
    if let Some(s) = &mlflow {
        // Tracking never stops the sweep: a folder that cannot take it is reported.
        if let Err(e) = tracking::open_sweep(&plan.out, s, sweep::tracking_params(&plan)) {
            eprintln!("trainer: warning: MLflow tracking off for this sweep: {e}");
        }
    }
    let opts = RunOptions {
        ort_lib,
        quiet,
        mlflow,
        ..RunOptions::default()
    };
    if let SweepMode::Run(task) = mode {
        let tasks = plan.tasks();
        if let Some(i) = sweep::task_from_env(task)? {
            let ran = sweep::run_task(&plan, i, &opts)?;
            println!("task {i}: {}", if ran { "done" } else { "done before" });
            return Ok(());
        }
        let mut before = 0;
        for i in 0..tasks.len() {
            if !sweep::run_task(&plan, i, &opts)? {
                before += 1;
            }
        }
        println!(
            "{} tasks: {} run now, {before} done before",
            tasks.len(),
            tasks.len() - before
        );
    }
    sweep_collect(&plan)
}

/// `trainer sweep --list`.
fn sweep_list(plan: &trainer::sweep::Plan) {
    let tasks = plan.tasks();
    println!(
        "{} configurations × {} folds = {} tasks (0 to {}); sweep folder {}",
        plan.cells.len(),
        plan.folds,
        tasks.len(),
        tasks.len().saturating_sub(1),
        plan.out.display()
    );
    for (i, (c, f)) in tasks.iter().enumerate() {
        println!("task {i}: cell_{c:02} ({}), fold {f}", plan.cells[*c].label);
    }
}

/// The sweep's summary (`--collect`, or the end of a plain run), and to its MLflow parent run.
fn sweep_collect(plan: &trainer::sweep::Plan) -> Result<()> {
    let c = trainer::sweep::collect(plan)?;
    print!("{}", c.table);
    println!(
        "best: configuration {} ({}); wrote {}/sweep_summary.csv, sweep_summary.md, forest.png",
        c.best,
        c.cells[c.best].label,
        plan.out.display()
    );
    if let Some(line) = tracking::after_collect(&plan.out) {
        eprintln!("{line}");
    }
    Ok(())
}
