//! `distillery serve`, the real binary, as a child process: for the tests that drive it as an
//! operator or a client would. Each test file that needs it includes this file as a module.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// Any free port on loopback.
pub const ANY_PORT: &str = "127.0.0.1:0";

pub struct Service {
    pub child: Child,
    pub base: String,
}

impl Service {
    /// The service on `bind` with `data_dir` and `extra` flags, once its log says where it
    /// listens (the only way to learn a port the OS picked).
    pub fn start(data_dir: &Path, bind: &str, extra: &[&str]) -> Service {
        let mut child = Command::new(env!("CARGO_BIN_EXE_distillery"))
            .args(["serve", "--bind", bind, "--log-format", "json", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let log = serde_json::from_str::<Value>(&line).unwrap_or_default();
                if let Some(address) = log["fields"]["address"].as_str() {
                    let _ = tx.send(address.to_string());
                }
            }
        });
        let address = rx.recv_timeout(Duration::from_secs(30)).expect("the service never said where it listens");
        Service { child, base: format!("http://{address}") }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Stops it with SIGTERM (it checkpoints its running jobs) and waits for a clean exit.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
