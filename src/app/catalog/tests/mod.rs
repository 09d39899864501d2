//! Catalog tests: free names and shared budgets here; `live`: a library's sessions in-process.

mod live;

use super::*;

#[test]
fn a_taken_name_gets_the_first_free_suffix() {
    let taken = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(free_name("a", &taken(&["b"])), "a");
    assert_eq!(free_name("a", &taken(&["a", "a (2)"])), "a (3)");
    // A name freed by a removal is given again.
    assert_eq!(free_name("a", &taken(&["a (2)"])), "a");
}

#[test]
fn budgets_are_shared_never_given_whole_to_each() {
    let total = session::Config {
        cache_bytes: 300,
        max_peers: 3,
        max_download_rate: Some(1000),
        max_upload_rate: None,
        ..session::Config::default()
    };
    let share = split_budgets(&total, 3);
    // One pool of the whole budget, shared: a clone of the share is the same pool.
    let pool = share.memory.clone().expect("a shared memory pool");
    assert_eq!(pool.budget(), 300);
    let other = share.clone().memory.unwrap();
    let mut a = crate::store::Store::join(&pool);
    let b = crate::store::Store::join(&other);
    let p = crate::piece::Geometry::new(100, 1000)
        .unwrap()
        .piece(0)
        .unwrap();
    a.insert(p, bytes::Bytes::from(vec![0; 200]), false, |_| false);
    assert!(
        b.has_room_for(100) && !b.has_room_for(101),
        "one budget for both"
    );
    // One set of peer slots of the whole total: what one torrent holds, another cannot.
    let caps = share.caps.clone().expect("shared caps");
    let other = share.clone().caps.unwrap();
    assert_eq!(caps.slots.total(), 3);
    let (first, second) = (caps.slots.join(), other.slots.join());
    first.update(false, false);
    let held: Vec<_> = (0..3).filter_map(|_| second.take(false)).collect();
    assert_eq!(held.len(), 3);
    assert!(first.update(true, false) == 0 && first.take(false).is_none());
    // One rate limit per direction for every torrent.
    assert!(std::sync::Arc::ptr_eq(&caps.download, &other.download));
    assert!(caps.download.is_limited() && !caps.upload.is_limited());
}

#[test]
fn torrents_added_one_by_one_share_the_library_pool() {
    let mut config = session::Config {
        cache_bytes: 300,
        ..session::Config::default()
    };
    config.memory = Some(crate::store::MemoryPool::new(config.cache_bytes));
    let (a, b) = (split_budgets(&config, 1), split_budgets(&config, 2));
    let mut first = crate::store::Store::join(&a.memory.expect("the pool"));
    let second = crate::store::Store::join(&b.memory.expect("the pool"));
    let p = crate::piece::Geometry::new(100, 1000)
        .unwrap()
        .piece(0)
        .unwrap();
    first.insert(p, bytes::Bytes::from(vec![0; 250]), false, |_| false);
    assert!(!second.has_room_for(51), "one budget for both");
}
