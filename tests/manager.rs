//! `Manager`, `SharedMap` and `SharedList` used from several processes.

use multiproc::{Manager, Pool, Process, SharedList, SharedMap};

#[multiproc::worker]
fn record(scores: SharedMap<String, u64>, name: String, score: u64) -> u32 {
    scores.insert(&name, &score).unwrap();
    std::process::id()
}

#[multiproc::worker]
fn append_many(list: SharedList<(u32, u32)>, who: u32, n: u32) {
    for i in 0..n {
        list.push(&(who, i)).unwrap();
    }
}

#[multiproc::worker]
fn read_back(scores: SharedMap<String, u64>, name: String) -> Option<u64> {
    scores.get(&name).unwrap()
}

#[multiproc::test]
fn workers_fill_a_shared_map() {
    let manager = Manager::new().unwrap();
    let scores: SharedMap<String, u64> = manager.map().unwrap();
    let pool = Pool::new(2).unwrap();
    let jobs: Vec<_> = (0..20u64)
        .map(|i| (scores.clone(), format!("player{i}"), i * 10))
        .collect();
    let pids = pool.map(record, jobs).unwrap();
    assert!(pids.iter().all(|&p| p != std::process::id()));
    assert_eq!(scores.len().unwrap(), 20);
    for i in 0..20u64 {
        assert_eq!(scores.get(&format!("player{i}")).unwrap(), Some(i * 10));
    }
    // And a worker sees what the parent wrote.
    scores.insert(&"parent".to_owned(), &7).unwrap();
    assert_eq!(
        pool.apply(read_back, (scores.clone(), "parent".to_owned()))
            .unwrap(),
        Some(7)
    );
    assert_eq!(scores.remove(&"parent".to_owned()).unwrap(), Some(7));
    assert!(!scores.contains_key(&"parent".to_owned()).unwrap());
    let mut all = scores.to_vec().unwrap();
    all.sort();
    assert_eq!(all.len(), 20);
    scores.clear().unwrap();
    assert!(scores.is_empty().unwrap());
}

#[multiproc::test]
fn four_processes_append_to_a_shared_list() {
    let manager = Manager::new().unwrap();
    let list: SharedList<(u32, u32)> = manager.list().unwrap();
    let procs: Vec<_> = (0..4)
        .map(|who| Process::spawn(append_many, (list.clone(), who, 250)).unwrap())
        .collect();
    for p in procs {
        p.join().unwrap();
    }
    let mut items = list.to_vec().unwrap();
    assert_eq!(items.len(), 1000);
    items.sort();
    let expected: Vec<(u32, u32)> = (0..4).flat_map(|w| (0..250).map(move |i| (w, i))).collect();
    assert_eq!(items, expected);
    // Each process's own items arrive in its order.
    let last = list.pop().unwrap();
    assert!(last.is_some());
    assert_eq!(list.len().unwrap(), 999);
    list.set(0, &(9, 9)).unwrap();
    assert_eq!(list.get(0).unwrap(), Some((9, 9)));
    assert!(list.set(5000, &(0, 0)).is_err());
}
