//! `llama-gpu serve` started on 127.0.0.1:0 with the shared model store, and driven over
//! HTTP.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub base: String,
    pub agent: ureq::Agent,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_llama-gpu"))
            .args(["serve", "--port", "0", "-c", "1024", "-t", "2"])
            .args(extra)
            .env("LLAMA_GPU_HOME", super::store_home())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("cannot start llama-gpu serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines.next().expect("serve exited early").unwrap();
            if let Some(addr) = line.split("listening on ").nth(1) {
                break addr.trim().to_string();
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let s = Server { child, base, agent };
        let t0 = Instant::now();
        while s.get("/health").0 != 200 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "never became healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut r = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    pub fn post_raw(
        &self,
        path: &str,
        body: &str,
        key: Option<&str>,
    ) -> ureq::http::Response<ureq::Body> {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        req.send(body).unwrap()
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let mut r = self.post_raw(path, &body.to_string(), None);
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The `data:` payloads of a streaming request, up to and including `[DONE]`.
    pub fn stream(&self, path: &str, body: Value) -> Vec<String> {
        let r = self.post_raw(path, &body.to_string(), None);
        assert_eq!(r.status().as_u16(), 200);
        let reader = BufReader::new(r.into_body().into_reader());
        reader
            .lines()
            .map(|l| l.unwrap())
            .filter_map(|l| l.strip_prefix("data: ").map(String::from))
            .collect()
    }

    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    pub fn wait_for(&self, what: &str, ok: impl Fn(&Server) -> bool) {
        let t0 = Instant::now();
        while !ok(self) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": "default", "messages": [{"role": "user", "content": content}], "max_tokens": 12, "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Runs one of the tests' Python scripts with the `openai` package against a server
/// started with `server_args`; the script gets the server's URL and then `args`. Skips
/// (outside CI) where Python cannot import `modules`.
pub fn run_openai_script(script: &str, modules: &str, server_args: &[&str], args: &[&str]) {
    let python = std::env::var("LLAMA_GPU_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let available = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide {modules} (LLAMA_GPU_TEST_PYTHON)"
        );
        eprintln!("skipped: {python} cannot import {modules} (pip install openai to run it)");
        return;
    }
    let s = Server::start(server_args);
    let script = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&python)
        .arg(script)
        .arg(&s.base)
        .args(args)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(report.contains("all checks passed"), "{report}");
}
