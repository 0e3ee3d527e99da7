//! The directory store: versions by content, atomic pointer moves, and what opening a store
//! after a crash repairs.

use std::path::Path;

use loraplex_adapters::{
    AdapterInfo, AdapterStore, DirStore, StoreCheck, VersionMeta, CONFIG_FILE, WEIGHTS_FILE,
};

fn info(sha: char) -> AdapterInfo {
    AdapterInfo {
        sha256: Some(sha.to_string().repeat(64)),
        checksum: sha.to_string().repeat(32),
        rank: 4,
        alpha: 8.0,
        targets: vec!["q_proj".into()],
        modules: 2,
        bytes: 100,
        base_model: None,
    }
}

/// Stages two files with distinguishable contents (the store does not validate).
fn commit(store: &DirStore, name: &str, sha: char) -> loraplex_adapters::StoredAdapter {
    let staging = store.stage().unwrap();
    std::fs::write(
        staging.path().join(CONFIG_FILE),
        format!("{{\"v\":\"{sha}\"}}"),
    )
    .unwrap();
    std::fs::write(staging.path().join(WEIGHTS_FILE), vec![sha as u8; 10]).unwrap();
    store
        .commit(staging, name, &info(sha), VersionMeta::default())
        .unwrap()
}

fn listed(store: &DirStore) -> Vec<String> {
    store
        .list()
        .unwrap()
        .into_iter()
        .map(|s| s.manifest.name)
        .collect()
}

fn staging_entries(root: &Path) -> usize {
    std::fs::read_dir(root.join(".staging")).unwrap().count()
}

/// A caller that loaded without the sha256 (`Identity::Checksum`) still gets a version named by
/// its content: the store hashes the staged files itself.
#[test]
fn a_version_without_its_sha256_is_hashed_by_the_store() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = DirStore::open(dir.path()).unwrap();
    let staging = store.stage().unwrap();
    let (config, weights) = (b"{\"v\":1}".to_vec(), vec![7u8; 10]);
    std::fs::write(staging.path().join(CONFIG_FILE), &config).unwrap();
    std::fs::write(staging.path().join(WEIGHTS_FILE), &weights).unwrap();
    let unhashed = AdapterInfo {
        sha256: None,
        ..info('a')
    };
    let stored = store
        .commit(staging, "acme", &unhashed, VersionMeta::default())
        .unwrap();
    let mut h = Sha256::new();
    h.update((config.len() as u64).to_le_bytes());
    h.update(&config);
    h.update(&weights);
    let want = format!("{:x}", h.finalize());
    assert_eq!(stored.manifest.sha256, want);
    assert!(stored.dir.ends_with(&want));
    assert_eq!(store.current("acme").unwrap().unwrap(), stored);
}

#[test]
fn versions_are_content_addressed_and_replace_moves_the_pointer() {
    let dir = tempfile::tempdir().unwrap();
    let (store, check) = DirStore::open(dir.path()).unwrap();
    assert_eq!(check, StoreCheck::default());
    let v1 = commit(&store, "acme", 'a');
    assert_eq!(v1.manifest.version, 1);
    assert_eq!(v1.manifest.size, 9 + 10);
    let v2 = commit(&store, "acme", 'b');
    assert_eq!(v2.manifest.version, 2);
    assert_eq!(store.current("acme").unwrap().unwrap(), v2);
    // The old version is still on disk, unchanged (running requests may be reading it).
    assert!(v1.dir.join(WEIGHTS_FILE).is_file());
    // Same content again: no new version, the pointer moves back.
    let again = commit(&store, "acme", 'a');
    assert_eq!(again.manifest.version, 1);
    assert_eq!(store.current("acme").unwrap().unwrap().manifest.version, 1);
    let versions: Vec<u64> = store
        .versions("acme")
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, vec![1, 2]);
    commit(&store, "other", 'c');
    let names = listed(&store);
    assert_eq!(names, vec!["acme", "other"]);
    assert_eq!(staging_entries(dir.path()), 0);

    assert!(store.delete("acme").unwrap());
    assert!(!store.delete("acme").unwrap());
    assert!(store.current("acme").unwrap().is_none());
    assert!(!dir.path().join("acme").exists());
    assert_eq!(staging_entries(dir.path()), 0);

    // Reopening sees exactly what was committed.
    drop(store);
    let (store, check) = DirStore::open(dir.path()).unwrap();
    assert_eq!(check.adapters, 1);
    assert_eq!(store.current("other").unwrap().unwrap().manifest.version, 1);
}

#[test]
fn a_dropped_staging_folder_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = DirStore::open(dir.path()).unwrap();
    let staging = store.stage().unwrap();
    std::fs::write(staging.path().join(CONFIG_FILE), "{}").unwrap();
    drop(staging);
    assert_eq!(staging_entries(dir.path()), 0);
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn invalid_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = DirStore::open(dir.path()).unwrap();
    for bad in [
        "",
        ".",
        "..",
        ".staging",
        "a/b",
        "a b",
        &"x".repeat(65),
        "é",
    ] {
        let staging = store.stage().unwrap();
        std::fs::write(staging.path().join(CONFIG_FILE), "{}").unwrap();
        std::fs::write(staging.path().join(WEIGHTS_FILE), "w").unwrap();
        assert!(
            store
                .commit(staging, bad, &info('a'), VersionMeta::default())
                .is_err(),
            "{bad:?}"
        );
    }
    assert!(store.list().unwrap().is_empty());
    assert_eq!(staging_entries(dir.path()), 0);
}

/// Every state a crash can leave between the steps of a commit or a delete.
#[test]
fn opening_after_a_crash_repairs_and_keeps_the_last_committed_versions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (store, _) = DirStore::open(root).unwrap();
    let kept = commit(&store, "kept", 'a');
    let replaced = commit(&store, "replaced", 'a');
    drop(store);

    // 1. An upload killed while staging: a half-written folder and a stray file.
    std::fs::create_dir_all(root.join(".staging/0123/x")).unwrap();
    std::fs::write(root.join(".staging/0123/adapter_model.safetensors"), "part").unwrap();
    std::fs::write(root.join(".staging/stray"), "x").unwrap();
    // 2. A delete killed after its rename: the name is already gone from the store.
    std::fs::create_dir_all(root.join(".staging/deleted-old-1/aaaa")).unwrap();
    // 3. A first upload killed after the version rename, before the pointer: not committed.
    let orphan = root.join("newname").join("b".repeat(64));
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::copy(kept.dir.join("manifest.json"), orphan.join("manifest.json")).unwrap();
    // 4. A replace killed before the pointer moved: the new version folder exists, the pointer
    //    still names the old one.
    let newer = root.join("replaced").join("c".repeat(64));
    std::fs::create_dir_all(&newer).unwrap();
    // 5. A pointer rewrite killed before its rename: only the temp file changed.
    std::fs::write(root.join("kept/.current.tmp"), "garbage").unwrap();
    // 6. Disk damage: a pointer to a version that does not exist.
    std::fs::create_dir_all(root.join("damaged")).unwrap();
    std::fs::write(root.join("damaged/current"), "d".repeat(64)).unwrap();

    let (store, check) = DirStore::open(root).unwrap();
    assert_eq!(check.removed_staging, 3);
    assert_eq!(check.removed_uncommitted, vec!["newname".to_string()]);
    assert_eq!(check.broken.len(), 1, "{check:?}");
    assert_eq!(check.broken[0].0, "damaged");
    assert_eq!(check.adapters, 2);
    assert_eq!(staging_entries(root), 0);
    assert!(!root.join("newname").exists());
    assert_eq!(store.current("kept").unwrap().unwrap(), kept);
    assert_eq!(store.current("replaced").unwrap().unwrap(), replaced);
    let names = listed(&store);
    assert_eq!(names, vec!["kept", "replaced"]);
    // A damaged current version is refused, not served half-read.
    std::fs::write(kept.dir.join(WEIGHTS_FILE), "short").unwrap();
    assert!(store.current("kept").is_err());
}
