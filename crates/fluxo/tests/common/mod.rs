//! Starts the real `fluxo serve` binary for end-to-end tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub bootstrap: String,
    #[allow(dead_code)]
    pub data_dir: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().to_path_buf();
        let mut s = Server::start_in(&data_dir, "127.0.0.1:0", &[]);
        s._dir = Some(dir);
        s
    }

    pub fn start_in(data_dir: &std::path::Path, addr: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fluxo"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--kafka-addr", addr])
            // Tests run side by side: the HTTP, Postgres, MQTT and registry
            // listeners must never fight over their fixed default ports.
            .args(["--http-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0"])
            .args([
                "--mqtt-addr",
                "127.0.0.1:0",
                "--registry-addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("FLUXO_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fluxo serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let bootstrap = loop {
            assert!(
                Instant::now() < deadline,
                "fluxo did not report its kafka listener"
            );
            let line = lines
                .next()
                .expect("fluxo exited before listening")
                .expect("read stdout");
            if let Some(addr) = line.strip_prefix("fluxo: kafka listening on ") {
                break addr.trim().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            bootstrap,
            data_dir: data_dir.to_path_buf(),
            _dir: None,
        }
    }

    /// SIGTERM, and the exit status once it stops.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fluxo did not stop within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
