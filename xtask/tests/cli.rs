//! Command-line behaviour of the `xtask` binary.

use std::process::Command;

/// Runs the xtask binary with `args`; returns (success, stdout, stderr).
fn xtask(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("failed to run xtask");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_lists_commands() {
    let (ok, stdout, _) = xtask(&["--help"]);
    assert!(ok);
    for command in ["ci", "bench", "--quick"] {
        assert!(
            stdout.contains(command),
            "help lacks `{command}`:\n{stdout}"
        );
    }
}

#[test]
fn unknown_command_fails_with_usage() {
    let (ok, _, stderr) = xtask(&["frobnicate"]);
    assert!(!ok);
    assert!(stderr.contains("unknown command `frobnicate`"), "{stderr}");
    assert!(stderr.contains("Usage: cargo xtask"), "{stderr}");

    let (ok, _, stderr) = xtask(&[]);
    assert!(!ok);
    assert!(stderr.contains("Usage: cargo xtask"), "{stderr}");
}
