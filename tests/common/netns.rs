//! Tests that run inside a loopback-only network namespace, and the processes they start.
//!
//! A DHT node talks to whatever addresses it hears of, so a test that runs one (btfs's or
//! libtorrent's) must run where loopback is all there is: [`in_loopback_netns`] re-executes
//! the test there. Inside, every address and port is the test's own, so tests running side by
//! side cannot collide, and fixed ports are safe.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};

use super::{Proc, swarm_cmd, terminate_all};

/// Set (to a marker file path) in the re-executed test that runs inside the namespace.
const NETNS_VAR: &str = "BTFS_TEST_IN_NETNS";

/// Runs `body` in a network namespace whose only interface is loopback. The test process
/// re-executes its own binary, filtered to `test` (its name as libtest prints it), under
/// `unshare -n -- sh -c 'ip link set lo up && exec "$0" "$@"'`, with `envs` added to its
/// environment, and asserts that it passed and that `body` ran there (a marker file: a filter
/// matching no test would also "pass"). Its output is kept and shown if it fails. The
/// re-executed test checks that `lo` is its only interface and runs `body`. Without `unshare`
/// (or the right to use it: root) the test fails; it never skips, and never runs `body`
/// outside the namespace.
pub fn in_loopback_netns(test: &str, envs: &[(&str, &str)], body: impl FnOnce()) {
    if let Some(marker) = std::env::var_os(NETNS_VAR) {
        let dev = std::fs::read_to_string("/proc/self/net/dev").expect("read /proc/self/net/dev");
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(ifaces, ["lo"], "not in a loopback-only network namespace");
        body();
        std::fs::write(marker, b"ran").expect("write the marker file");
        return;
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let out = Command::new("unshare")
        .args([
            "-n",
            "--",
            "sh",
            "-c",
            r#"ip link set lo up && exec "$0" "$@""#,
        ])
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(NETNS_VAR, &marker)
        .envs(envs.iter().copied())
        .output()
        .expect("run `unshare -n` (util-linux; needs root): DHT tests run only there");
    let output = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{test} in its network namespace: {}\n{output}",
        out.status
    );
    assert!(
        marker.exists(),
        "{test} did not run in its network namespace\n{output}"
    );
}

/// A process a test runs in the background (stderr to a log file), ended by its PID: SIGTERM,
/// then SIGKILL after a grace period, on [`Background::stop`] or on drop.
pub struct Background(Proc);

impl Background {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Background {
        Background(Proc::spawn(name, cmd, log))
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.exited()
    }

    /// Its name, PID and everything it logged so far.
    pub fn log_text(&self) -> String {
        self.0.log_text()
    }

    /// Ends it (SIGTERM, then SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        terminate_all(&mut [&mut self.0.child]);
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `python scripts/swarm.py` as a Command (the interpreter and script the harness picks).
pub fn swarm_py() -> Command {
    swarm_cmd()
}
