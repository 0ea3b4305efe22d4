//! `conclave client`: a person at a terminal registering, calling routes and
//! watching events on a real server.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{Server, conclave, run, stderr, stdout};

fn client(dir: &std::path::Path, server: &Server) -> std::process::Command {
    let mut cmd = conclave(dir);
    cmd.args(["client", "--server", &format!("http://{}", server.http)]);
    cmd
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

#[test]
fn register_call_and_listen_from_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[auth]\npassword_hash_memory_kib = 64\npassword_hash_iterations = 1\n",
    )
    .unwrap();
    let server = Server::start(
        dir.path(),
        &["--config", config.to_str().unwrap(), "--data-dir", "d"],
    );

    let output = run(client(dir.path(), &server).args([
        "register",
        "--username",
        "tess",
        "--password",
        "terminal-pw",
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    let grant = json(&stdout(&output));
    let token = grant["token"].as_str().unwrap().to_owned();

    let output =
        run(client(dir.path(), &server).args(["call", "account/user/detail", "--token", &token]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(json(&stdout(&output))["username"], "tess");

    // Errors are JSON with the stable code, and a failure exit status.
    let output =
        run(client(dir.path(), &server).args(["call", "no/such/route", "{}", "--token", &token]));
    assert!(!output.status.success());
    assert_eq!(json(&stderr(&output))["error"]["code"], "unknown_route");

    // A second device of tess listens; the first changes the profile.
    let output = run(client(dir.path(), &server).args([
        "login",
        "--username",
        "tess",
        "--password",
        "terminal-pw",
    ]));
    let second = json(&stdout(&output))["token"].as_str().unwrap().to_owned();
    let listener = client(dir.path(), &server)
        .args([
            "listen",
            "--token",
            &second,
            "--count",
            "1",
            "--idle-secs",
            "20",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the listener time to connect before the event is caused.
    std::thread::sleep(Duration::from_millis(700));
    let output = run(client(dir.path(), &server).args([
        "call",
        "account/user/update",
        r#"{"bio":"typed in a terminal"}"#,
        "--token",
        &token,
    ]));
    assert!(output.status.success(), "{}", stderr(&output));
    let listened = listener.wait_with_output().unwrap();
    assert!(
        listened.status.success(),
        "{}",
        String::from_utf8_lossy(&listened.stderr)
    );
    let event = json(
        String::from_utf8_lossy(&listened.stdout)
            .lines()
            .next()
            .unwrap(),
    );
    assert_eq!(event["event"], "user/updated");
    assert_eq!(event["body"]["bio"], "typed in a terminal");
}
