//! `cargo xtask ci`: run the CI script.

use std::process::{Command, ExitCode};

use anyhow::Context;

use crate::workspace;

/// Runs `bash .ci/run` from the workspace root and returns its exit status.
pub(crate) fn run() -> anyhow::Result<ExitCode> {
    let root = workspace::root();
    let script = root.join(".ci").join("run");
    anyhow::ensure!(
        script.is_file(),
        "CI script not found at {}",
        script.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .current_dir(&root)
        .status()
        .with_context(|| format!("failed to run `bash {}`", script.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => {
            eprintln!("error: .ci/run exited with status {code}");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        None => {
            eprintln!("error: .ci/run was terminated by a signal");
            ExitCode::FAILURE
        }
    })
}
