//! The resident adapter cache: leases, LRU eviction, memory accounting, versions.

use loraplex_adapters::{
    load_dir_checked, AdapterCache, AdapterLimits, AdapterRegistry, BaseModel, CacheConfig,
    Identity, LoadedAdapter,
};

use crate::util::{golden, tiny};

/// As the engine loads a folder given by flag: no sha256, the checksum is the cache's key.
fn loaded(name: &str) -> LoadedAdapter {
    load_dir_checked(
        &golden().join("tiny-adapters").join(name),
        &BaseModel::of(tiny()),
        &AdapterLimits::default(),
        Identity::Checksum,
    )
    .unwrap()
}

fn setup(max_loras: usize) -> (AdapterRegistry, AdapterCache) {
    let reg = AdapterRegistry::new();
    reg.scan_dir(&golden().join("tiny-adapters")).unwrap();
    (
        reg,
        AdapterCache::new(CacheConfig {
            max_loras,
            max_bytes: 1 << 30,
            max_cpu_loras: 2 * max_loras,
        }),
    )
}

#[test]
fn eviction_is_lru_and_never_touches_a_leased_adapter() {
    let (reg, mut cache) = setup(2);
    let (a, b, c) = (
        reg.get("a-r8-qv").unwrap().version,
        reg.get("b-r16-all").unwrap().version,
        reg.get("c-r4-rslora").unwrap().version,
    );
    let lease_a = cache.insert(&a, loaded("a-r8-qv")).unwrap();
    drop(cache.insert(&b, loaded("b-r16-all")).unwrap());
    // a is leased: inserting c must evict b even though a was used longer ago.
    drop(cache.insert(&c, loaded("c-r4-rslora")).unwrap());
    assert!(cache.contains(&a) && cache.contains(&c) && !cache.contains(&b));
    // Both leased: nothing can be evicted, so the cache refuses instead.
    let lease_c = cache.get(&c).unwrap();
    assert!(cache.insert(&b, loaded("b-r16-all")).is_err());
    drop(lease_c);
    // With a still leased, c (unleased) is the victim.
    cache.insert(&b, loaded("b-r16-all")).unwrap();
    assert!(cache.contains(&a) && cache.contains(&b) && !cache.contains(&c));
    drop(lease_a);
    // Now a is least recently used and unleased.
    cache.get(&b);
    cache.insert(&c, loaded("c-r4-rslora")).unwrap();
    assert_eq!(
        cache.resident_names(),
        vec!["c-r4-rslora".to_string(), "b-r16-all".to_string()]
    );
}

#[test]
fn two_names_for_the_same_bytes_are_both_resident() {
    // An alias (say, an A/B arm) holding byte-identical files must not evict its twin on every
    // use: the cache keys entries by content checksum and name.
    let (reg, mut cache) = setup(4);
    let a = reg.get("a-r8-qv").unwrap().version;
    let alias = reg
        .register("a-alias", golden().join("tiny-adapters/a-r8-qv"))
        .version;
    let (la, lb) = (
        cache.insert(&a, loaded("a-r8-qv")).unwrap(),
        cache.insert(&alias, loaded("a-r8-qv")).unwrap(),
    );
    assert_eq!(la.info.checksum, lb.info.checksum);
    assert_eq!(la.info.sha256, None);
    assert!(cache.contains(&a) && cache.contains(&alias));
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.bytes(), 2 * la.info.bytes);
    assert!(cache.get(&a).is_some() && cache.get(&alias).is_some());
    cache.unload("a-alias");
    assert!(cache.contains(&a) && !cache.contains(&alias));
}

#[test]
fn memory_accounting_returns_to_baseline_after_unload() {
    let (reg, mut cache) = setup(4);
    assert_eq!(cache.bytes(), 0);
    let a = reg.get("a-r8-qv").unwrap().version;
    let lease = cache.insert(&a, loaded("a-r8-qv")).unwrap();
    let bytes = lease.info.bytes;
    assert!(bytes > 0 && cache.bytes() == bytes);
    let weak = std::sync::Arc::downgrade(&lease);
    cache.unload("a-r8-qv");
    assert_eq!(cache.bytes(), 0);
    assert!(
        weak.upgrade().is_some(),
        "a leased adapter outlives its unload"
    );
    drop(lease);
    assert!(weak.upgrade().is_none(), "and is freed with its last lease");
}

#[test]
fn byte_budget_bounds_residency() {
    let reg = AdapterRegistry::new();
    reg.scan_dir(&golden().join("tiny-adapters")).unwrap();
    let a = loaded("a-r8-qv");
    let mut cache = AdapterCache::new(CacheConfig {
        max_loras: 10,
        max_bytes: a.info.bytes + 1,
        max_cpu_loras: 10,
    });
    cache
        .insert(&reg.get("a-r8-qv").unwrap().version, a)
        .unwrap();
    cache
        .insert(
            &reg.get("c-r4-rslora").unwrap().version,
            loaded("c-r4-rslora"),
        )
        .unwrap();
    assert_eq!(
        cache.len(),
        1,
        "the second adapter evicts the first to stay under the byte budget"
    );
}

#[test]
fn a_replaced_version_is_never_served_to_new_requests() {
    let (reg, mut cache) = setup(4);
    let v1 = reg
        .register("prod", golden().join("tiny-adapters/a-r8-qv"))
        .version;
    let old = cache.insert(&v1, loaded("a-r8-qv")).unwrap();
    let v2 = reg
        .register("prod", golden().join("tiny-adapters/b-r16-all"))
        .version;
    assert!(
        cache.get(&v2).is_none(),
        "the old version does not answer for the new one"
    );
    let new = cache.insert(&v2, loaded("b-r16-all")).unwrap();
    assert_ne!(old.info.checksum, new.info.checksum);
    assert_eq!(old.version, v1);
    assert_eq!(cache.get(&v2).unwrap().info.checksum, new.info.checksum);
}

#[test]
fn evicted_adapters_wait_in_the_second_tier() {
    let (reg, mut cache) = setup(1); // one active, two in total
    let (a, b, c) = (
        reg.get("a-r8-qv").unwrap().version,
        reg.get("b-r16-all").unwrap().version,
        reg.get("c-r4-rslora").unwrap().version,
    );
    let sum_a = cache
        .insert(&a, loaded("a-r8-qv"))
        .unwrap()
        .info
        .checksum
        .clone();
    cache.insert(&b, loaded("b-r16-all")).unwrap();
    assert_eq!((cache.len(), cache.warm_len()), (1, 1));
    let back = cache.take_warm(&a).expect("a waits in the second tier");
    assert_eq!(back.info.checksum, sum_a);
    cache.insert(&a, back).unwrap(); // b goes warm
    cache.insert(&c, loaded("c-r4-rslora")).unwrap(); // a goes warm, b falls out (2 in total)
    assert!(cache.take_warm(&b).is_none());
    assert!(cache.take_warm(&a).is_some());
}
