//! Pool workers fill a shared map and a shared list hosted by a `Manager`:
//! `Manager::map` / `Manager::list`, the Rust side of Python's
//! `Manager().dict()` and `Manager().list()`. Prints both and checks them.
//!
//! The Python it ports:
//!
//! ```python
//! def collect_results(shared_dict, shared_list, worker_id):
//!     shared_dict[f"worker_{worker_id}"] = worker_id ** 2
//!     shared_list.append(f"done_{worker_id}")
//!
//! if __name__ == "__main__":
//!     with Manager() as manager:
//!         d = manager.dict()
//!         l = manager.list()
//!         processes = [Process(target=collect_results, args=(d, l, i))
//!                      for i in range(4)]
//!         for p in processes: p.start()
//!         for p in processes: p.join()
//!         print(f"dict: {dict(d)}")  # {'worker_0': 0, 'worker_1': 1, ...}
//!         print(f"list: {list(l)}")  # ['done_0', ...] (order may vary)
//! ```
//!
//! Here the calls run in a `Pool` (Python's `pool.starmap` with the proxies
//! in each tuple). The handles are ordinary arguments: cloning one and
//! passing it to a worker gives that process its own connection to the same
//! data. Every operation is a round trip to the manager (tens of
//! microseconds), so a manager is for results and coordination, not for hot
//! loops.
//!
//! ```text
//! cargo run --release --example manager_dict
//! ```

use std::collections::BTreeMap;

use multiproc::{Manager, Pool, SharedList, SharedMap, entry, worker};

/// How many calls: more than there are worker processes, so that each
/// process runs several of them.
const CALLS: u32 = 8;

/// Writes `worker_{id}` → `id²` into the map and appends `done_{id}` to the
/// list; returns the pid of the process that did it.
///
/// A failed operation (the manager gone) panics, and `pool.map` returns
/// that panic as an `Err` naming this item.
#[worker]
fn collect_results(
    shared_dict: SharedMap<String, u32>,
    shared_list: SharedList<String>,
    worker_id: u32,
) -> u32 {
    let key = format!("worker_{worker_id}");
    shared_dict
        .insert(&key, &(worker_id * worker_id))
        .expect("writing to the shared dict");
    shared_list
        .push(&format!("done_{worker_id}"))
        .expect("appending to the shared list");
    std::process::id()
}

#[entry]
fn main() -> Result<(), multiproc::Error> {
    let manager = Manager::new()?;
    let d: SharedMap<String, u32> = manager.map()?;
    let l: SharedList<String> = manager.list()?;

    let pool = Pool::new(0)?;
    let calls = (0..CALLS).map(|i| (d.clone(), l.clone(), i));
    let pids = pool.map(collect_results, calls)?;

    let me = std::process::id();
    for (i, pid) in pids.iter().enumerate() {
        assert_ne!(*pid, me, "the call must have run in a worker process");
        println!("call {i} ran in process {pid}");
    }

    // The parent sees everything the workers wrote.
    let dict: BTreeMap<String, u32> = d.to_vec()?.into_iter().collect();
    let list = l.to_vec()?;
    println!("dict: {dict:?}");
    println!("list: {list:?}  (in the order the calls finished)");

    let expected: BTreeMap<String, u32> =
        (0..CALLS).map(|i| (format!("worker_{i}"), i * i)).collect();
    assert_eq!(dict, expected, "every call must have written its square");
    let mut sorted = list.clone();
    sorted.sort_by_key(|s| s["done_".len()..].parse::<u32>().unwrap_or(u32::MAX));
    let expected: Vec<String> = (0..CALLS).map(|i| format!("done_{i}")).collect();
    assert_eq!(sorted, expected, "every call must have appended once");
    println!("ok: {} keys, {} list items", dict.len(), list.len());
    Ok(())
}
