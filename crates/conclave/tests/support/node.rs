//! Node.js for the tests that drive real Yjs clients (`tests/node`): the
//! packages are installed on first use (`npm install`). Without node or npm
//! a test prints a notice and passes, except under CI (`CI=true`), where it
//! fails.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The Node scripts and their `package.json`.
pub const NODE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");

/// `npm install` of a few small packages; generous for a slow mirror.
const NPM_INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// The packages the scripts import; any missing means `npm install`.
const PACKAGES: [&str; 4] = ["yjs", "y-websocket", "ws", "@hocuspocus/provider"];

/// Whether node and the test's packages are ready; installs the packages
/// once per run. Without them: a notice and `false`, or a panic under CI.
pub fn node_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    match READY.get_or_init(prepare_node) {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{why}; node and npm are required under CI"
            );
            println!("NOTICE: {why}; skipping");
            false
        }
    }
}

fn prepare_node() -> Result<(), String> {
    let node = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("node is not installed ({err})"))?;
    if !node.status.success() {
        return Err("node --version failed".to_owned());
    }
    let modules = Path::new(NODE_DIR).join("node_modules");
    if PACKAGES
        .iter()
        .all(|package| modules.join(package).is_dir())
    {
        return Ok(());
    }
    let mut install = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund"])
        .current_dir(NODE_DIR)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("npm is not installed ({err})"))?;
    let deadline = Instant::now() + NPM_INSTALL_TIMEOUT;
    loop {
        match install.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut pipe) = install.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return Err(format!("npm install failed ({status}): {stderr}"));
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = install.kill();
                let _ = install.wait();
                return Err(format!(
                    "npm install took longer than {NPM_INSTALL_TIMEOUT:?}"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(err) => return Err(format!("waiting for npm install: {err}")),
        }
    }
}
