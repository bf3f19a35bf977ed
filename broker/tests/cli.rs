//! The `starling` binary's handling of bad configuration: it must name the
//! key and the problem and exit non-zero before listening.

use std::io::Write;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn starling(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn starling");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("starling did not exit on bad configuration");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn config_file(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with(text)
}

/// A tiny temp file helper (no extra dependency for one test file).
mod tempfile_path {
    use super::*;
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn with(text: &str) -> TempPath {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("starling-cli-{}-{n}.toml", std::process::id()));
            let mut f = std::fs::File::create(&path).expect("create temp config");
            f.write_all(text.as_bytes()).expect("write temp config");
            TempPath(path)
        }
        pub fn as_str(&self) -> &str {
            self.0.to_str().expect("utf-8 temp path")
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_key_in_file_is_named() {
    let file = config_file("[sessions]\nmax_inflihgt = 3\n");
    let out = starling(&["--config", file.as_str()], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("max_inflihgt"), "{}", stderr(&out));
}

#[test]
fn wrong_type_in_file_names_the_key() {
    let file = config_file("[sessions]\nmax_queued_messages = \"lots\"\n");
    let out = starling(&["--config", file.as_str()], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("max_queued_messages"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn invalid_value_from_env_is_named() {
    let out = starling(&[], &[("STARLING_MAX_INFLIGHT", "0")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("max_inflight"), "{}", stderr(&out));
}

#[test]
fn unparsable_flag_is_named() {
    let out = starling(&["--max-packet-size", "huge"], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--max-packet-size"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_config_file_is_reported() {
    let out = starling(&["--config", "/nonexistent/starling.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/starling.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn flag_beats_env_beats_file() {
    // Validation runs on the merged value. The file's 0 is invalid:
    let file = config_file("[limits]\nmax_topic_levels = 0\n");
    let out = starling(&["--config", file.as_str()], &[]);
    assert_eq!(out.status.code(), Some(2));
    // ...a good env value overrides it, so the broker starts...
    let env = [("STARLING_MAX_TOPIC_LEVELS", "8")];
    assert!(starts_listening(
        &["--config", file.as_str(), "--listen", "127.0.0.1:0"],
        &env
    ));
    // ...and a bad flag overrides the env again.
    let out = starling(
        &["--config", file.as_str(), "--max-topic-levels", "0"],
        &env,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("max_topic_levels"));
}

/// Starts `starling`, waits (bounded) for its "listening" log line, stops it.
fn starts_listening(args: &[&str], env: &[(&str, &str)]) -> bool {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn starling");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("listening") {
                let _ = tx.send(());
                return;
            }
        }
    });
    let listening = rx.recv_timeout(Duration::from_secs(10)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    listening
}
