//! The wharf binary under test, spawned with one scrubbed environment, and what tests read from
//! its output.

use std::process::{Command, Output, Stdio};

/// Variables that would configure wharf (or its logging) from outside the test.
const SCRUBBED: &[&str] = &[
    "WHARF_CONFIG",
    "WHARF_DATA_DIR",
    "WHARF_LISTEN",
    "WHARF_SERVER",
    "WHARF_TOKEN",
    "WHARF_USER",
    "RUST_LOG",
    "STATE_DIRECTORY",
];

/// `wharf`, with nothing leaking in from the environment and stdin closed.
pub fn wharf_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
    for var in SCRUBBED {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// `wharf_command`, for tests that wait on it in the runtime.
pub fn wharf_command_async() -> tokio::process::Command {
    tokio::process::Command::from(wharf_command())
}

/// `wharf <args>` run to its end.
pub async fn run_wharf(args: &[&str]) -> Output {
    wharf_command_async()
        .args(args)
        .output()
        .await
        .expect("run wharf")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit status and both streams, for assertion messages.
pub fn describe(o: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        stdout(o),
        stderr(o)
    )
}

/// `o`, after asserting that the command succeeded.
#[track_caller]
pub fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", describe(&o));
    o
}

/// Asserts that the command's stdout contains `needle`, showing everything when it does not.
#[track_caller]
pub fn expect_stdout(o: &Output, needle: &str) {
    assert!(stdout(o).contains(needle), "{}", describe(o));
}

/// Asserts that the command's stderr contains `needle`, showing everything when it does not.
#[track_caller]
pub fn expect_stderr(o: &Output, needle: &str) {
    assert!(stderr(o).contains(needle), "{}", describe(o));
}
