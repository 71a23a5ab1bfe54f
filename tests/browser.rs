//! The browser SDK: its codec against the golden vectors under Node's test runner, and the
//! SDK and demo page end to end in headless Chromium against real `edgegate serve` processes
//! (web/e2e/run.mjs). Without Node, the npm packages or Chromium the test says so in one line
//! and passes, unless `EDGEGATE_REQUIRE_BROWSER=1` (as in `.ci/run`), which makes it fail.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    std::env::var("EDGEGATE_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

/// Why the browser tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("node is not installed".into());
    }
    if !root().join("web/node_modules/playwright-core").exists() {
        return Some("web/node_modules is missing (run npm ci --prefix web)".into());
    }
    if !Path::new(&chromium()).exists() {
        return Some(format!(
            "{} is not installed (apt-get install chromium)",
            chromium()
        ));
    }
    None
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

fn skip_or_fail(why: &str) -> bool {
    assert!(
        !required(),
        "browser tests required (EDGEGATE_REQUIRE_BROWSER=1) but {why}"
    );
    println!(
        "browser tests skipped: {why} — install chromium (apt-get install chromium) and run npm ci --prefix web; set EDGEGATE_REQUIRE_BROWSER=1 to make this an error"
    );
    true
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stdout.lines().filter(|l| l.starts_with("screenshot:")) {
        println!("{line}");
    }
    assert!(
        out.status.success(),
        "{what} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}

#[test]
fn js_codec_passes_the_golden_vectors() {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) && skip_or_fail("node is not installed") {
        return;
    }
    run(
        Command::new("node")
            .args(["--test", "web/test/"])
            .current_dir(root()),
        "node --test web/test/",
    );
}

#[test]
fn sdk_and_demo_work_end_to_end_in_chromium() {
    if let Some(why) = missing()
        && skip_or_fail(&why)
    {
        return;
    }
    let out = root().join("target/test-output");
    run(
        Command::new("node")
            .args(["--test", "--test-concurrency=1", "web/e2e/run.mjs"])
            .env("EDGEGATE_BIN", env!("CARGO_BIN_EXE_edgegate"))
            .env("EDGEGATE_OUT", &out)
            .env("CHROMIUM", chromium())
            .current_dir(root()),
        "web/e2e/run.mjs in headless Chromium",
    );
}
