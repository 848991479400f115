//! A small driver for headless Chromium over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`): the browser reads commands on its fd 3 and writes answers and
//! events on its fd 4, each a JSON message ended by a NUL byte. Enough to open a page, run
//! JavaScript in it, wait for a condition and take screenshots; no crate needed.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long one protocol command may take before the test gives up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Browser {
    child: Child,
    commands: File,
    answers: mpsc::Receiver<Value>,
    next_id: u64,
    /// The page's session (`Target.attachToTarget` with `flatten`).
    session: String,
    _profile: tempfile::TempDir,
}

/// `CHROMIUM`, else the first of the usual names on `PATH`.
pub fn find_chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(found) = std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()) {
            return found;
        }
    }
    panic!(
        "no Chromium found (set CHROMIUM, or put chromium, chromium-browser or google-chrome on PATH); \
         scripts/test.sh installs it (Debian package `chromium`)"
    );
}

/// A pipe whose two ends are closed on exec, so only the fds the child is given explicitly
/// reach it.
fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2 failed");
    (fds[0], fds[1])
}

/// In the child: `read_end` becomes fd 3 and `write_end` fd 4 (dup2 clears close-on-exec). Both
/// are first moved above 10 so that neither dup2 overwrites the other.
fn install_fds(read_end: RawFd, write_end: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl and dup2 on fds this process owns; called between fork and exec.
    unsafe {
        let read_high = libc::fcntl(read_end, libc::F_DUPFD_CLOEXEC, 10);
        let write_high = libc::fcntl(write_end, libc::F_DUPFD_CLOEXEC, 10);
        if read_high < 0 || write_high < 0 || libc::dup2(read_high, 3) < 0 || libc::dup2(write_high, 4) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Browser {
    /// Starts headless Chromium with a fresh profile and opens one blank page of `width`×`height`.
    pub fn start(width: u32, height: u32) -> Browser {
        let chromium = find_chromium();
        let profile = tempfile::tempdir().unwrap();
        let (to_browser_read, to_browser_write) = pipe();
        let (from_browser_read, from_browser_write) = pipe();
        let mut command = Command::new(&chromium);
        command
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run"])
            .args(["--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--mute-audio"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: install_fds only calls async-signal-safe functions (fcntl, dup2).
        unsafe { command.pre_exec(move || install_fds(to_browser_read, from_browser_write)) };
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", chromium.display()));
        // SAFETY: the parent owns these ends; the child's copies are its fds 3 and 4 now.
        let (commands, answers) = unsafe {
            libc::close(to_browser_read);
            libc::close(from_browser_write);
            (File::from_raw_fd(to_browser_write), File::from_raw_fd(from_browser_read))
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for message in BufReader::new(answers).split(0).map_while(Result::ok) {
                if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                    if tx.send(value).is_err() {
                        break;
                    }
                }
            }
        });
        let mut browser =
            Browser { child, commands, answers: rx, next_id: 0, session: String::new(), _profile: profile };
        browser.open_page(width, height);
        browser
    }

    fn open_page(&mut self, width: u32, height: u32) {
        let target = self.send(None, "Target.createTarget", json!({"url": "about:blank"}));
        let attached =
            self.send(None, "Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true}));
        self.session = attached["sessionId"].as_str().unwrap().to_string();
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
    }

    /// One command and its result; events and other answers on the way are skipped.
    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).expect("the browser stopped reading commands");
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self.answers.recv_timeout(left).unwrap_or_else(|e| panic!("{method}: no answer ({e})"));
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method} failed: {}", answer["error"]);
                return answer["result"].clone();
            }
        }
    }

    /// A command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params)
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// The value of a JavaScript expression (promises awaited); a thrown exception fails the test.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({"expression": expression, "awaitPromise": true, "returnByValue": true}));
        if let Some(details) = result.get("exceptionDetails") {
            panic!(
                "`{expression}` threw: {}",
                details["exception"]["description"].as_str().unwrap_or(&details.to_string())
            );
        }
        result["result"]["value"].clone()
    }

    /// Polls `condition` (JavaScript) until it is truthy; on timeout, fails naming `what`.
    pub fn wait_for(&mut self, what: &str, condition: &str, timeout: Duration) {
        let started = Instant::now();
        let probe = format!("(() => {{ try {{ return !!({condition}); }} catch (e) {{ return false; }} }})()");
        while self.eval(&probe) != json!(true) {
            assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what} ({condition})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The visible page as a PNG at `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (with padding), as the protocol sends binary data.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {:?}", c as char),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let bits = chunk.iter().enumerate().fold(0u32, |acc, (i, &d)| acc | (u32::from(d) << (18 - 6 * i)));
        out.extend_from_slice(&bits.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decodes_what_the_protocol_sends() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("aGV5"), b"hey");
}
