//! Store behaviour on local files and against a local HTTP server standing in for
//! Hugging Face (no network is used).

use gguf::{GgmlType, GgufWriter, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use store::{Store, StoreError};

fn tiny_gguf(dir: &Path, name: &str, fill: u8) -> PathBuf {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("llama".into()));
    w.add_tensor("t", &[32, 4], GgmlType::F32, vec![fill; 512])
        .unwrap();
    let path = dir.join(name);
    w.write_file(&path).unwrap();
    path
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn import_list_resolve_remove() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let file = tiny_gguf(home.path(), "My-Model.gguf", 1);
    let digest = sha256(&file);

    let m = store.import(&file, None).unwrap();
    assert_eq!(m.name, "my-model");
    assert_eq!(m.digest, digest);
    assert_eq!(m.size, std::fs::metadata(&file).unwrap().len());
    store.import(&file, Some("alias")).unwrap();

    let names: Vec<String> = store.list().unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["alias", "my-model"]);
    let blob = store.blob_path(&digest);
    assert_eq!(store.resolve("my-model").unwrap(), blob);
    assert_eq!(store.resolve(&digest[..8]).unwrap(), blob);
    assert_eq!(store.resolve(file.to_str().unwrap()).unwrap(), file);
    assert!(matches!(
        store.resolve("nope"),
        Err(StoreError::NotFound { .. })
    ));

    store.remove("my-model").unwrap();
    assert!(blob.exists(), "blob still referenced by 'alias'");
    store.remove("alias").unwrap();
    assert!(!blob.exists());
    assert!(store.remove("alias").is_err());
}

#[test]
fn import_rejects_non_gguf_and_bad_names() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let junk = home.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model").unwrap();
    assert!(store.import(&junk, None).is_err());
    let good = tiny_gguf(home.path(), "m.gguf", 2);
    assert!(matches!(
        store.import(&good, Some("../evil")),
        Err(StoreError::BadName { .. })
    ));
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn hash_mismatch_is_never_installed_and_verify_finds_corruption() {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(home.path()).unwrap();
    let file = tiny_gguf(home.path(), "m.gguf", 3);
    let wrong = "0".repeat(64);
    let err = store
        .pull(file.to_str().unwrap(), Some(&wrong))
        .unwrap_err();
    assert!(matches!(err, StoreError::HashMismatch { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(home.path().join("blobs"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(home.path().join("tmp")).unwrap().count(),
        0
    );

    let m = store
        .pull(file.to_str().unwrap(), Some(&sha256(&file)))
        .unwrap();
    assert!(store.verify().unwrap().iter().all(|c| c.ok));
    let blob = store.blob_path(&m.digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let checks = store.verify().unwrap();
    assert_eq!(checks.len(), 1);
    assert!(!checks[0].ok);
    assert_eq!(checks[0].names, ["m"]);
}

#[test]
fn concurrent_pulls_of_one_model_are_safe() {
    let home = tempfile::tempdir().unwrap();
    let file = tiny_gguf(home.path(), "shared.gguf", 4);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (root, file) = (home.path().to_path_buf(), file.clone());
            std::thread::spawn(move || {
                let store = Store::open(root).unwrap();
                store.pull(file.to_str().unwrap(), None).unwrap()
            })
        })
        .collect();
    let manifests: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(manifests.iter().all(|m| m.digest == manifests[0].digest));
    assert_eq!(
        std::fs::read_dir(home.path().join("blobs"))
            .unwrap()
            .count(),
        1
    );
}

/// Serves one file with Range support and an `X-Linked-Etag` digest. The first
/// `cut_first` responses stop halfway through the body, like a dropped connection.
fn serve(body: Vec<u8>, etag: String, cut_first: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut start = 0usize;
            let mut path = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if line.starts_with("GET ") {
                    path = line.split(' ').nth(1).unwrap_or("").to_owned();
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    start = v.trim().trim_end_matches('-').parse().unwrap_or(0);
                }
            }
            if !path.ends_with("/resolve/main/dir/model.gguf") {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                continue;
            }
            let rest = &body[start..];
            let status = if start > 0 {
                "206 Partial Content"
            } else {
                "200 OK"
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nx-linked-etag: \"{etag}\"\r\nconnection: close\r\n\r\n",
                rest.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let send = if n < cut_first {
                &rest[..rest.len() / 2]
            } else {
                rest
            };
            let _ = stream.write_all(send);
        }
    });
    (format!("http://{addr}"), requests)
}

#[test]
fn hugging_face_download_resumes_and_checks_the_hash() {
    let home = tempfile::tempdir().unwrap();
    let file = tiny_gguf(home.path(), "src.gguf", 5);
    let body = std::fs::read(&file).unwrap();
    let digest = sha256(&file);
    let (endpoint, requests) = serve(body.clone(), digest.clone(), 1);
    std::env::set_var("HF_ENDPOINT", &endpoint);
    let store = Store::open(home.path().join("store")).unwrap();

    let err = store.pull("hf:org/repo/dir/model.gguf", None).unwrap_err();
    assert!(err.to_string().contains("resume"), "{err}");
    let m = store.pull("hf:org/repo/dir/model.gguf", None).unwrap();
    assert_eq!(m.digest, digest);
    assert_eq!(m.name, "model");
    assert_eq!(m.source, "hf:org/repo/dir/model.gguf");
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), body);

    let (endpoint, _) = serve(body, "f".repeat(64), 0);
    std::env::set_var("HF_ENDPOINT", &endpoint);
    let other = Store::open(home.path().join("other")).unwrap();
    let err = other.pull("hf:org/repo/dir/model.gguf", None).unwrap_err();
    assert!(matches!(err, StoreError::HashMismatch { .. }), "{err}");
    assert!(other.list().unwrap().is_empty());
    let err = other.pull("hf:org/repo/missing.gguf", None).unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}
