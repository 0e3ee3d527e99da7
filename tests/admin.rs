//! The admin API through `app().oneshot(...)`: upload, replace, pull, delete, vLLM's load/unload,
//! keys, and every hostile upload refused with the store left as it was.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use loraplex_adapters::{AdapterLimits, DirStore, CONFIG_FILE, WEIGHTS_FILE};
use loraplex_gateway::{app, AppState, GatewayConfig};
use loraplex_models::HubOptions;
use loraplex_runtime::EngineConfig;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::adapter_fixtures::{write_bad_tiny_adapter, BAD_CASES};
use crate::util::{golden, tiny_arc, tiny_registry};

const ADMIN: &str = "admin-secret";
const INFER: &str = "inference-secret";
const LIMIT: usize = 1 << 20;

struct Fixture {
    st: AppState,
    store: tempfile::TempDir,
    allowed: tempfile::TempDir,
}

fn fixture_with(admin: Option<&str>, api: Option<&str>, hub: HubOptions) -> Fixture {
    let store = tempfile::tempdir().unwrap();
    let allowed = tempfile::tempdir().unwrap();
    let cfg = GatewayConfig {
        served_model_name: "tiny".into(),
        max_model_len: 512,
        admin_api_key: admin.map(String::from),
        api_key: api.map(String::from),
        max_upload_bytes: LIMIT,
        allowed_local_adapter_root: Some(allowed.path().to_path_buf()),
        hub,
        ..Default::default()
    };
    let st = state_over(store.path(), cfg);
    Fixture { st, store, allowed }
}

/// A gateway over the store at `store`, with its own engine holding the start-up adapters.
fn state_over(store: &Path, cfg: GatewayConfig) -> AppState {
    let lm = tiny_arc();
    let engine_cfg = EngineConfig {
        limits: AdapterLimits { max_rank: 32 },
        ..Default::default()
    };
    let engine = loraplex_runtime::start(lm.clone(), tiny_registry(), engine_cfg).unwrap();
    let (dir_store, _) = DirStore::open(store).unwrap();
    AppState::new(cfg, engine, lm, None).with_store(Arc::new(dir_store))
}

fn fixture() -> Fixture {
    fixture_with(Some(ADMIN), Some(INFER), HubOptions::default())
}

fn tiny_adapter(name: &str) -> PathBuf {
    golden().join("tiny-adapters").join(name)
}

enum Part<'a> {
    Text(&'a str, &'a str),
    File(&'a str, Vec<u8>),
}

/// The two files of a PEFT folder as upload parts.
fn folder_parts(dir: &Path) -> Vec<Part<'static>> {
    [CONFIG_FILE, WEIGHTS_FILE]
        .into_iter()
        .map(|f| Part::File(f, std::fs::read(dir.join(f)).unwrap()))
        .collect()
}

fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "loraplex-test-boundary-7f3a";
    let mut body = Vec::new();
    for p in parts {
        write!(body, "--{boundary}\r\n").unwrap();
        match p {
            Part::Text(name, value) => {
                write!(
                    body,
                    "Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .unwrap();
            }
            Part::File(file_name, bytes) => {
                write!(body, "Content-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").unwrap();
                body.extend_from_slice(bytes);
                body.extend_from_slice(b"\r\n");
            }
        }
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn send(st: &AppState, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v)
}

async fn upload_as(st: &AppState, key: Option<&str>, parts: &[Part<'_>]) -> (StatusCode, Value) {
    let (ct, body) = multipart(parts);
    let mut b = Request::post("/v1/adapters")
        .header("content-type", ct)
        .header("content-length", body.len());
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    send(st, b.body(Body::from(body)).unwrap()).await
}

async fn upload(st: &AppState, parts: &[Part<'_>]) -> (StatusCode, Value) {
    upload_as(st, Some(ADMIN), parts).await
}

async fn json_call(
    st: &AppState,
    method: &str,
    uri: &str,
    key: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {key}"));
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let body = body.map(|v| Body::from(v.to_string())).unwrap_or_default();
    send(st, b.body(body).unwrap()).await
}

async fn admin_post(st: &AppState, uri: &str, body: Value) -> (StatusCode, Value) {
    json_call(st, "POST", uri, ADMIN, Some(body)).await
}

/// Greedy text of a short completion with `model`.
async fn complete(st: &AppState, model: &str) -> (StatusCode, Value) {
    let body = json!({"model": model, "prompt": [1, 5, 9, 12], "max_tokens": 6, "temperature": 0,
                      "logprobs": 0, "return_tokens_as_token_ids": true});
    json_call(st, "POST", "/v1/completions", INFER, Some(body)).await
}

fn tokens(v: &Value) -> Value {
    v["choices"][0]["logprobs"]["tokens"].clone()
}

/// Every file under the store with its size: what a refused upload must not change.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.insert(p.clone(), 0);
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::metadata(&p).unwrap().len());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_serves_replace_switches_and_delete_removes() {
    let f = fixture();
    let st = &f.st;
    let mut parts = folder_parts(&tiny_adapter("a-r8-qv"));
    parts.push(Part::Text("name", "acme"));
    parts.push(Part::Text("description", "first"));
    parts.push(Part::Text("label", "team=search"));
    let (status, card) = upload(st, &parts).await;
    assert_eq!(status, StatusCode::CREATED, "{card}");
    assert_eq!(card["version"], 1);
    assert_eq!(card["rank"], 8);
    assert_eq!(card["labels"]["team"], "search");
    assert_eq!(card["sha256"].as_str().unwrap().len(), 64);

    let (_, models) = json_call(st, "GET", "/v1/models", INFER, None).await;
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "acme" && m["parent"] == "tiny"));
    // The uploaded copy serves exactly what the same adapter given at start-up serves.
    let (status, up) = complete(st, "acme").await;
    assert_eq!(status, StatusCode::OK, "{up}");
    let (_, reference_a) = complete(st, "a-r8-qv").await;
    let (_, reference_b) = complete(st, "b-r16-all").await;
    assert_eq!(tokens(&up), tokens(&reference_a));
    assert_ne!(tokens(&reference_a), tokens(&reference_b));

    // Same bytes again: still version 1. Other bytes: version 2, served at once.
    let (status, again) = upload(st, &parts).await;
    assert_eq!(
        (status, again["version"].clone()),
        (StatusCode::CREATED, json!(1))
    );
    let mut parts_b = folder_parts(&tiny_adapter("b-r16-all"));
    parts_b.push(Part::Text("name", "acme"));
    let (status, v2) = upload(st, &parts_b).await;
    assert_eq!(status, StatusCode::CREATED, "{v2}");
    assert_eq!(v2["version"], 2);
    let (_, now) = complete(st, "acme").await;
    assert_eq!(tokens(&now), tokens(&reference_b));

    let (status, shown) = json_call(st, "GET", "/v1/adapters/acme", ADMIN, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["versions"].as_array().unwrap().len(), 2);
    assert_eq!(shown["requests"], 2);
    let (_, list) = json_call(st, "GET", "/v1/adapters", ADMIN, None).await;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"acme") && names.contains(&"a-r8-qv"),
        "{names:?}"
    );

    let (status, _) = json_call(st, "DELETE", "/v1/adapters/acme", ADMIN, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, err) = complete(st, "acme").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"]["code"], "model_not_found");
    let (status, _) = json_call(st, "GET", "/v1/adapters/acme", ADMIN, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = json_call(st, "DELETE", "/v1/adapters/acme", ADMIN, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!f.store.path().join("acme").exists());
}

fn tar_of(entries: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        raw_name(&mut h, name);
        b.append(&h, *data).unwrap();
    }
    let bytes = b.into_inner().unwrap();
    if !gzip {
        return bytes;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&bytes).unwrap();
    gz.finish().unwrap()
}

/// Sets a member name as is (the tar crate refuses `..` and absolute names, attackers do not).
fn raw_name(h: &mut tar::Header, name: &str) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
}

fn tar_with_link(kind: tar::EntryType) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_entry_type(kind);
    h.set_link_name("/etc/passwd").unwrap();
    raw_name(&mut h, "adapter_config.json");
    b.append(&h, std::io::empty()).unwrap();
    b.into_inner().unwrap()
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn folder_files(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(dir.join(CONFIG_FILE)).unwrap(),
        std::fs::read(dir.join(WEIGHTS_FILE)).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_of_the_folder_are_accepted() {
    let f = fixture();
    let (cfg, w) = folder_files(&tiny_adapter("c-r4-rslora"));
    let archives = [
        (
            "plain.tar",
            tar_of(&[(CONFIG_FILE, &cfg), (WEIGHTS_FILE, &w)], false),
        ),
        (
            "folder.tar.gz",
            tar_of(
                &[
                    ("c/README.md", b"# card"),
                    ("c/adapter_config.json", &cfg),
                    ("c/adapter_model.safetensors", &w),
                ],
                true,
            ),
        ),
        (
            "folder.zip",
            zip_of(&[
                ("c/adapter_config.json", &cfg),
                ("c/adapter_model.safetensors", &w),
            ]),
        ),
    ];
    for (i, (file, bytes)) in archives.into_iter().enumerate() {
        let name = format!("arch-{i}");
        let (status, card) =
            upload(&f.st, &[Part::Text("name", &name), Part::File(file, bytes)]).await;
        assert_eq!(status, StatusCode::CREATED, "{file}: {card}");
        assert_eq!(card["rank"], 4);
        let (status, _) = complete(&f.st, &name).await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_are_refused_and_leave_the_store_unchanged() {
    let f = fixture();
    // One good adapter so that "unchanged" is about a non-empty store.
    let mut good = folder_parts(&tiny_adapter("a-r8-qv"));
    good.push(Part::Text("name", "existing"));
    assert_eq!(upload(&f.st, &good).await.0, StatusCode::CREATED);
    let before = snapshot(f.store.path());

    let (cfg, w) = folder_files(&tiny_adapter("a-r8-qv"));
    let bomb = zip_of(&[(CONFIG_FILE, &cfg), (WEIGHTS_FILE, &vec![0u8; 2 * LIMIT])]);
    assert!(bomb.len() < LIMIT / 10, "the bomb compresses well");
    let files = |name: &'static str| -> Vec<Part<'static>> {
        let mut p = folder_parts(&tiny_adapter("a-r8-qv"));
        p.push(Part::Text("name", name));
        p
    };
    let archive = |file: &'static str, bytes: Vec<u8>| -> Vec<Part<'static>> {
        vec![Part::Text("name", "hostile"), Part::File(file, bytes)]
    };
    let mut cases: Vec<(String, Vec<Part>, StatusCode)> = vec![
        (
            "traversal tar".into(),
            archive(
                "x.tar",
                tar_of(
                    &[("../adapter_config.json", &cfg), (WEIGHTS_FILE, &w)],
                    false,
                ),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "absolute tar".into(),
            archive(
                "x.tar",
                tar_of(
                    &[("/tmp/adapter_config.json", &cfg), (WEIGHTS_FILE, &w)],
                    false,
                ),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "symlink tar".into(),
            archive("x.tar", tar_with_link(tar::EntryType::Symlink)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "hardlink tar".into(),
            archive("x.tar", tar_with_link(tar::EntryType::Link)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unexpected member".into(),
            archive(
                "x.tar.gz",
                tar_of(
                    &[
                        (CONFIG_FILE, &cfg),
                        (WEIGHTS_FILE, &w),
                        ("run.sh", b"rm -rf /"),
                    ],
                    true,
                ),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "nested folder".into(),
            archive(
                "x.tar",
                tar_of(
                    &[("a/b/adapter_config.json", &cfg), (WEIGHTS_FILE, &w)],
                    false,
                ),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "duplicate member".into(),
            archive(
                "x.tar",
                tar_of(
                    &[
                        (CONFIG_FILE, &cfg),
                        ("x/adapter_config.json", &cfg),
                        (WEIGHTS_FILE, &w),
                    ],
                    false,
                ),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "traversal zip".into(),
            archive(
                "x.zip",
                zip_of(&[("../adapter_config.json", &cfg), (WEIGHTS_FILE, &w)]),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "zip bomb".into(),
            archive("x.zip", bomb),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not an archive".into(),
            archive("x.tar", b"hello".to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "too large".into(),
            archive("x.tar", vec![0u8; LIMIT + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "no files".into(),
            vec![Part::Text("name", "hostile")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "no name".into(),
            folder_parts(&tiny_adapter("a-r8-qv")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "extra file".into(),
            {
                let mut p = files("hostile");
                p.push(Part::File("evil.py", b"x".to_vec()));
                p
            },
            StatusCode::BAD_REQUEST,
        ),
        (
            "one file only".into(),
            vec![
                Part::Text("name", "hostile"),
                Part::File(CONFIG_FILE, cfg.clone()),
            ],
            StatusCode::BAD_REQUEST,
        ),
    ];
    let long = "x".repeat(65);
    for bad in [
        "../evil",
        ".hidden",
        "a/b",
        "has space",
        long.as_str(),
        "tiny",
        "",
    ] {
        let mut p = folder_parts(&tiny_adapter("a-r8-qv"));
        p.push(Part::Text("name", bad));
        cases.push((format!("name {bad:?}"), p, StatusCode::BAD_REQUEST));
    }
    for label in BAD_CASES {
        let dir = tempfile::tempdir().unwrap();
        write_bad_tiny_adapter(label, dir.path());
        let mut p = folder_parts(dir.path());
        p.push(Part::Text("name", "hostile"));
        cases.push((format!("bad adapter: {label}"), p, StatusCode::BAD_REQUEST));
    }
    for (label, parts, want) in cases {
        let (status, body) = upload(&f.st, &parts).await;
        assert_eq!(status, want, "{label}: {body}");
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !msg.is_empty() && msg != "internal error",
            "{label}: {body}"
        );
        assert_eq!(
            snapshot(f.store.path()),
            before,
            "{label} changed the store"
        );
    }
    // And the server still serves.
    assert_eq!(complete(&f.st, "existing").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_take_the_admin_key_only() {
    let f = fixture();
    let mut parts = folder_parts(&tiny_adapter("a-r8-qv"));
    parts.push(Part::Text("name", "keyed"));
    assert_eq!(
        upload_as(&f.st, None, &parts).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        upload_as(&f.st, Some("wrong"), &parts).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = upload_as(&f.st, Some(INFER), &parts).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for (method, uri) in [
        ("GET", "/v1/adapters"),
        ("GET", "/v1/adapters/a-r8-qv"),
        ("DELETE", "/v1/adapters/a-r8-qv"),
    ] {
        assert_eq!(
            json_call(&f.st, method, uri, INFER, None).await.0,
            StatusCode::FORBIDDEN,
            "{uri}"
        );
        assert_eq!(
            json_call(&f.st, method, uri, "wrong", None).await.0,
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
    }
    assert!(snapshot(f.store.path())
        .keys()
        .all(|p| p.ends_with(".staging")));
    assert_eq!(
        upload_as(&f.st, Some(ADMIN), &parts).await.0,
        StatusCode::CREATED
    );
    // The admin key is not an inference key.
    let body = json!({"model": "keyed", "prompt": "x", "max_tokens": 1});
    assert_eq!(
        json_call(&f.st, "POST", "/v1/completions", ADMIN, Some(body))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // With an inference key but no admin key, the admin API is closed.
    let closed = fixture_with(None, Some(INFER), HubOptions::default());
    assert_eq!(
        json_call(&closed.st, "GET", "/v1/adapters", INFER, None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_load_and_unload_and_pulls_from_allowed_paths_and_the_hub() {
    let cache = tempfile::tempdir().unwrap();
    crate::hub::lay_out_cache(cache.path(), "acme/tiny-lora", &tiny_adapter("b-r16-all"));
    let hub = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        offline: true,
        token: None,
        endpoint: Some("http://127.0.0.1:9".into()),
    };
    let f = fixture_with(Some(ADMIN), Some(INFER), hub);
    let st = &f.st;
    let inside = f.allowed.path().join("mine");
    std::fs::create_dir(&inside).unwrap();
    for file in [CONFIG_FILE, WEIGHTS_FILE] {
        std::fs::copy(tiny_adapter("a-r8-qv").join(file), inside.join(file)).unwrap();
    }
    let outside = tiny_adapter("a-r8-qv");
    let load = |name: &str, path: &Path| json!({"lora_name": name, "lora_path": path});

    let (status, _) = admin_post(st, "/v1/load_lora_adapter", load("x", &outside)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let escape = f
        .allowed
        .path()
        .join("..")
        .join(outside.strip_prefix("/").unwrap_or(&outside));
    let (status, _) = admin_post(st, "/v1/load_lora_adapter", load("x", &escape)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, text) = admin_post(st, "/v1/load_lora_adapter", load("mine", &inside)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.as_str().unwrap().contains("added successfully"));
    let (status, _) = admin_post(st, "/v1/load_lora_adapter", load("mine", &inside)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, mine) = complete(st, "mine").await;
    let (_, reference) = complete(st, "a-r8-qv").await;
    assert_eq!(tokens(&mine), tokens(&reference));
    let unload = json!({"lora_name": "mine"});
    assert_eq!(
        admin_post(st, "/v1/unload_lora_adapter", unload.clone())
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        admin_post(st, "/v1/unload_lora_adapter", unload).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(complete(st, "mine").await.0, StatusCode::NOT_FOUND);

    // Pulls: a folder under the allowed root, and a hub repo (here from an offline cache).
    let (status, card) = admin_post(
        st,
        "/v1/adapters/pull",
        json!({"name": "pulled-local", "source": inside}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{card}");
    let (status, card) = admin_post(
        st,
        "/v1/adapters/pull",
        json!({"name": "pulled-hub", "source": "acme/tiny-lora"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{card}");
    assert_eq!(card["rank"], 16);
    let (_, hub_out) = complete(st, "pulled-hub").await;
    let (_, reference_b) = complete(st, "b-r16-all").await;
    assert_eq!(tokens(&hub_out), tokens(&reference_b));
    let (status, err) = admin_post(
        st,
        "/v1/adapters/pull",
        json!({"name": "nope", "source": "acme/not-cached"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_adapter_is_served_from_memory_without_a_second_load() {
    let f = fixture();
    let mut parts = folder_parts(&tiny_adapter("b-r16-all"));
    parts.push(Part::Text("name", "fresh"));
    let (status, card) = upload(&f.st, &parts).await;
    assert_eq!(status, StatusCode::CREATED, "{card}");
    // The engine was handed the validated weights: its first request needs no file.
    let dir = PathBuf::from(card["path"].as_str().unwrap());
    std::fs::remove_file(dir.join(WEIGHTS_FILE)).unwrap();
    let (status, out) = complete(&f.st, "fresh").await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let (_, reference) = complete(&f.st, "b-r16-all").await;
    assert_eq!(tokens(&out), tokens(&reference));
}

/// A second gateway over `f`'s store, as another replica sharing it would be: its registry
/// holds only the start-up adapters, and it finds the store's versions on first request.
fn replica(f: &Fixture) -> AppState {
    let cfg = GatewayConfig {
        served_model_name: "tiny".into(),
        max_model_len: 512,
        admin_api_key: Some(ADMIN.into()),
        api_key: Some(INFER.into()),
        ..Default::default()
    };
    state_over(f.store.path(), cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_version_is_registered_only_by_a_valid_request() {
    let f = fixture();
    let mut parts = folder_parts(&tiny_adapter("a-r8-qv"));
    parts.push(Part::Text("name", "acme"));
    let (status, card) = upload(&f.st, &parts).await;
    assert_eq!(status, StatusCode::CREATED, "{card}");
    let other = replica(&f);
    let before = other.engine.registry().names();
    assert!(!before.contains(&"acme".to_string()));
    let chat = |patch: Value| {
        let mut b = json!({"model": "acme", "messages": [{"role": "user", "content": "Hi"}],
                           "max_tokens": 4});
        for (k, v) in patch.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let invalid = [
        (
            "/v1/chat/completions",
            chat(json!({"temperature": 3.0})),
            "temperature",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"messages": []})),
            "messages",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 600})),
            "messages",
        ),
        (
            "/v1/completions",
            json!({"model": "acme", "prompt": [1, 99999]}),
            "prompt",
        ),
    ];
    for (uri, body, param) in invalid {
        let (status, err) = json_call(&other, "POST", uri, INFER, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(err["error"]["param"], param, "{err}");
        assert_eq!(other.engine.registry().names(), before, "after {err}");
    }
    let (status, shown) = json_call(&other, "GET", "/v1/models/acme", INFER, None).await;
    assert_eq!((status, &shown["parent"]), (StatusCode::OK, &json!("tiny")));
    assert_eq!(shown["root"], card["path"]);
    assert_eq!(other.engine.registry().names(), before);
    // A valid request registers it and is served the stored version.
    let (status, out) = complete(&other, "acme").await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert!(other.engine.registry().get("acme").is_some());
    let (_, reference) = complete(&f.st, "a-r8-qv").await;
    assert_eq!(tokens(&out), tokens(&reference));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_version_is_a_503_naming_the_adapter_and_the_reason() {
    let f = fixture();
    let mut parts = folder_parts(&tiny_adapter("a-r8-qv"));
    parts.push(Part::Text("name", "rotten"));
    let (status, card) = upload(&f.st, &parts).await;
    assert_eq!(status, StatusCode::CREATED, "{card}");
    // The stored weights rot on disk; a replica that never loaded them serves the name.
    let weights = PathBuf::from(card["path"].as_str().unwrap()).join(WEIGHTS_FILE);
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&weights, bytes).unwrap();
    let other = replica(&f);
    let (status, err) = complete(&other, "rotten").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    assert_eq!(err["error"]["code"], "adapter_unavailable", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("rotten") && message.contains("corrupt"),
        "{message}"
    );
    // Everything else keeps serving.
    let (status, _) = complete(&other, "a-r8-qv").await;
    assert_eq!(status, StatusCode::OK);
}
